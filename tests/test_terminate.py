"""SIGTERM (timeout, systemd, container stops) and kill -9 leave nothing behind (issue 20, 10): the CLI and batch
doors remove their hidden temporary files on SIGTERM and still die of it; an install killed with -9 leaves a
staging folder that the next install into the same folder removes."""
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from rsgen_qgis.core.runtime.install import install_zip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wait_for(pattern, proc, log, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if glob.glob(pattern):
            return
        time.sleep(0.02)
    log.seek(0)
    pytest.fail(f"{pattern} never appeared (exit {proc.poll()}): {log.read()[-3000:]!r}")


def _sigterm(cmd, pattern, tmp_path):
    log = open(tmp_path / "child.log", "w+b")
    p = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=ROOT), stdout=log, stderr=subprocess.STDOUT)
    _wait_for(pattern, p, log)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(120)
    log.seek(0)
    return rc, log.read().decode(errors="replace")


@pytest.mark.slow
def test_sigterm_during_generate_removes_the_temp_file(tiny_model_dir, tmp_path):
    out = tmp_path / "big.tif"
    cmd = [sys.executable, "-m", "rsgen_qgis", "generate", "--extent", "500000,4000000,501280,4001280", "--crs",
           "EPSG:32633", "--gsd", "10", "--steps", "400", "--large-area", "--model", "rsgen-tiny", "--model-dir",
           tiny_model_dir, "--out", str(out), "--quiet"]
    rc, log = _sigterm(cmd, str(tmp_path / ".big.tif.partial-*"), tmp_path)
    assert rc == -signal.SIGTERM, log  # still dies of the signal (exit status 143 in a shell)
    assert "terminated" in log
    assert os.listdir(tmp_path) == ["child.log"], os.listdir(tmp_path)


@pytest.mark.slow
def test_sigterm_during_a_batch_run(tiny_model_dir, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "output": "out", "crs": "EPSG:32734", "gsd": 4.0, "model": "rsgen-tiny", "model_dirs": [tiny_model_dir],
        "steps": 300, "tile_px": 48, "aois": {"bboxes": [{"bbox": [453130.0, 6233600.0, 453500.0, 6233850.0]}]}}))
    cmd = [sys.executable, "-m", "rsgen_qgis", "batch", str(job), "--workers", "0", "--quiet"]
    rc, log = _sigterm(cmd, str(tmp_path / "out" / "tiles" / ".*.partial-*"), tmp_path)
    assert rc == -signal.SIGTERM, log
    hidden = [f for f in glob.glob(str(tmp_path / "out" / "**" / ".*"), recursive=True)]
    assert hidden == [], hidden  # no partial tile, no probe, no lock left


def test_a_killed_installs_staging_folder_is_removed_next_time(tiny_model_zip, tmp_path):
    dest = tmp_path / "models"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40]
    stale = dest / f".installing-{host}-{dead.pid}-k9x"
    (stale / "rsgen-tiny").mkdir(parents=True)
    (stale / "rsgen-tiny" / "denoiser.onnx").write_bytes(b"\0" * 1000)
    live = dest / f".installing-{host}-{os.getpid()}-busy"  # an install running now (this process): kept
    live.mkdir()
    other = dest / ".installing-otherhost-1-abc"  # another machine's: not ours to judge
    other.mkdir()
    install_zip(tiny_model_zip, str(dest))
    assert not stale.exists() and live.exists() and other.exists()
    assert (dest / "rsgen-tiny" / "manifest.json").exists()
    shutil.rmtree(live)
