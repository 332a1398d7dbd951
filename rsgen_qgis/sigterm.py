"""SIGTERM for the command-line doors: clean up, then die of the signal.

timeout(1), systemd and container stops send SIGTERM, whose default action ends Python at once: no `finally`, no
`except` runs, so the hidden temporary files beside an output (core.geo.geotiff), a half-written batch tile and the
job folder's lock (batch.lock), or an install's staging folder (core.runtime.install) stay behind. Inside
`terminates_cleanly()` SIGTERM raises Terminated instead, a BaseException like KeyboardInterrupt: the cleanup code on
the way out (which handles BaseException) runs, and the door then re-sends the signal to itself with the default
action, so a supervisor still sees a process killed by SIGTERM (exit status 143). A kill -9 cannot be caught: the
batch runner's and the installer's next start remove what it left.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM arrived; raised where the program was, so every cleanup on the way out runs."""


def _raise(signum, frame):
    raise Terminated(signum)


@contextmanager
def terminates_cleanly():
    """SIGTERM raises Terminated inside the block; after the cleanup, the process dies of SIGTERM."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    except Terminated:
        print("terminated (SIGTERM): temporary files removed, nothing half-written is left", file=sys.stderr)
        sys.stderr.flush()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise SystemExit(128 + signal.SIGTERM)  # where the default action does not end the process at once
    finally:
        if signal.getsignal(signal.SIGTERM) is _raise:
            signal.signal(signal.SIGTERM, previous)
