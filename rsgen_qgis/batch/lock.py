"""One runner per batch job folder: a lock file that says who holds it.

Two runners on one folder would remove each other's temporary files (each cleans up "stale" partial tiles at its
start) and rewrite the manifest from their own view, losing finished tiles. The runner therefore holds
`<output>/.rsgen-batch.lock` while it works: an OS lock on the open file (flock, or msvcrt on Windows), which the
system releases when the process dies however it dies, plus the holder's process id, host and start time written
in the file, so a refused runner can say who holds the folder.

A lock file whose OS lock is free is stale when it was written on this host (its process is gone, or its pid now
belongs to another program: either way it holds no lock) and is taken over. One written on another host is
respected: its runner may be alive on a shared folder whose file system does not pass OS locks between machines;
the message says how to clear it when it is not.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from typing import Optional

from ..core.errors import RsgenError

LOCK_FILE = ".rsgen-batch.lock"


class JobFolderLocked(RsgenError):
    """Another batch runner is working in this job's output folder."""


def _os_lock(fd: int) -> bool:
    """Try to take the OS lock on the open lock file without waiting; True when taken."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            os.lseek(fd, 1 << 30, os.SEEK_SET)  # a byte past the text, which others still read
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _holder(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(h: dict) -> str:
    if not h.get("pid"):
        return "another runner (it has not written its details yet)"
    return f"process {h.get('pid')} on {h.get('host', '?')} since {h.get('started', '?')}"


class JobLock:
    """Held from acquire() to release(); refuses (JobFolderLocked) when another runner holds the folder."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(os.path.abspath(folder), LOCK_FILE)
        self.fd: Optional[int] = None

    def acquire(self) -> "JobLock":
        host = socket.gethostname()
        for _ in range(5):  # the file may be replaced between open and lock: try again on the new one
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _os_lock(fd):
                os.close(fd)
                raise JobFolderLocked(f"{os.path.dirname(self.path)} is being worked on by "
                                      f"{_describe(_holder(self.path))}; wait for it to finish (or stop it) before "
                                      "running this job again.")
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same_file = False
            if not same_file:
                os.close(fd)
                continue
            old = _holder(self.path)
            if old.get("host") not in (None, host):
                os.close(fd)
                raise JobFolderLocked(
                    f"{os.path.dirname(self.path)} is being worked on by {_describe(old)} (another machine, whose "
                    f"lock this machine cannot check). If no runner is working there any more, delete "
                    f"{self.path} and run again.")
            info = {"pid": os.getpid(), "host": host,
                    "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(info).encode())
            os.fsync(fd)
            self.fd = fd
            return self
        raise JobFolderLocked(f"{os.path.dirname(self.path)}: could not take the job folder's lock {self.path}.")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.remove(self.path)  # before the OS lock goes: a waiting runner then re-opens a fresh file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "JobLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
