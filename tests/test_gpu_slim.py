"""`make gpu-slim` / `gpu-unslim`: what travels to a device call (the working tree, 64 MiB with what is carried)
leaves the model graphs and images aside, keeps the graph a training phase starts from, and everything comes
back byte for byte."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_LIMIT = 64 * 1024 * 1024
PACK_ROOM = 24 * 1024 * 1024  # left for the carried latent pack part and caption embeddings


def _tree_bytes(root):
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return sum(os.path.getsize(os.path.join(root, f)) for f in out.decode().split("\0")
               if f and os.path.isfile(os.path.join(root, f)))


@pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")),
                    reason="needs git and a git checkout")
def test_gpu_slim_leaves_room_for_the_pack_and_restores(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--local", ROOT, str(clone)], check=True)
    graphs = sorted(f for f in subprocess.run(["git", "ls-files", "models/*.onnx"], cwd=clone, capture_output=True,
                                              text=True, check=True).stdout.split())
    keep = next((g for g in graphs if g.endswith("rsgen-base-1/denoiser.onnx")), graphs[0])
    before = {g: os.path.getsize(clone / g) for g in graphs}
    r = subprocess.run(["make", "-s", "gpu-slim", f"LATENT_INIT={keep}"], cwd=clone, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(clone / keep)
    assert all(not os.path.exists(clone / g) for g in graphs if g != keep)
    assert _tree_bytes(clone) <= DEVICE_LIMIT - PACK_ROOM, r.stdout
    assert "bytes tracked" in r.stdout
    r = subprocess.run(["make", "-s", "gpu-unslim"], cwd=clone, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {g: os.path.getsize(clone / g) for g in graphs} == before
    st = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert st.stdout == "" and not os.path.exists(clone / ".gpu-aside")
