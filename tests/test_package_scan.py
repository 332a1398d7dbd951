"""The plugin zip passes the scans plugins.qgis.org runs on every upload (since 2026: Bandit and detect-secrets
block a version from download and approval; file permissions and hidden files are reported).

The zip is the one `make package` builds (without the models: they are data, not code), scanned as uploaded.
Bandit's LOW findings are allowed (the one today: `random` picks a seed for the Random button, not a secret);
MEDIUM or HIGH fail, and so does any secret detect-secrets finds.
"""
import json
import os
import stat
import subprocess
import sys
import zipfile

import pytest

from tests.qt6_scan import ROOT

import package  # tools/package.py (conftest puts tools/ on the path)


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("zip")
    out = str(root / "rsgen_qgis.zip")
    package.build(out, os.path.join(ROOT, "models"), with_models=False)
    with zipfile.ZipFile(out) as zf:
        zf.extractall(root / "x")
        infos = zf.infolist()
    return str(root / "x" / "rsgen_qgis"), infos


def _tool(module: str):
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    if probe.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed (requirements-dev.txt)")
        pytest.skip(f"{module} is not installed (make test installs it from requirements-dev.txt)")


def test_bandit_finds_nothing_above_low(unpacked):
    _tool("bandit")
    folder, _ = unpacked
    run = subprocess.run([sys.executable, "-m", "bandit", "-r", folder, "-f", "json", "-q"],
                         capture_output=True, text=True, timeout=300)
    report = json.loads(run.stdout)
    assert report["metrics"]["_totals"]["loc"] > 5000  # it scanned the plugin's code
    serious = [f"{r['issue_severity']} {r['test_id']} {os.path.relpath(r['filename'], folder)}:{r['line_number']} "
               f"{r['issue_text']}" for r in report["results"] if r["issue_severity"] in ("MEDIUM", "HIGH")]
    assert not serious, "\n".join(serious)
    assert not report["errors"], report["errors"]


def test_detect_secrets_finds_none(unpacked):
    _tool("detect_secrets")
    folder, _ = unpacked
    run = subprocess.run([sys.executable, "-m", "detect_secrets", "scan", "--all-files", "."], cwd=folder,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)["results"]
    assert not found, json.dumps(found, indent=1)


def test_the_code_only_zip_fits_the_repository_limit(unpacked, tmp_path):
    out = str(tmp_path / "repo.zip")
    package.build(out, os.path.join(ROOT, "models"), with_models=False)
    assert os.path.getsize(out) <= package.REPOSITORY_LIMIT
    assert "within plugins.qgis.org's 25 MB" in package.repository_note(out)


def test_a_model_zip_unzipped_anywhere_is_found_and_verified(tiny_model_dir, tmp_path):
    """The repository's plugin has no model inside: the user unzips build/models/<id>.zip and adds the folder."""
    from rsgen_qgis.core.runtime.models import discover, verify_files

    zips = package.build_model_zips(str(tmp_path / "zips"), tiny_model_dir)
    assert [os.path.basename(z) for z in zips] == ["rsgen-tiny.zip"]
    with zipfile.ZipFile(zips[0]) as zf:
        assert {n.split("/")[0] for n in zf.namelist()} == {"rsgen-tiny"}
        zf.extractall(tmp_path / "my models")
    found = {p.id: p for p in discover([str(tmp_path / "my models")])}
    assert "rsgen-tiny" in found and found["rsgen-tiny"].path.startswith(str(tmp_path / "my models"))
    verify_files(found["rsgen-tiny"])  # every file's sha256 as in its manifest


def test_no_executable_or_hidden_files(unpacked):
    _, infos = unpacked
    assert len(infos) > 40
    for info in infos:
        mode = info.external_attr >> 16
        assert not mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH), info.filename
        assert not any(part.startswith(".") for part in info.filename.split("/")), info.filename
        assert not info.filename.endswith((".pyc", ".so", ".dll", ".exe", ".sh")), info.filename
