"""Installing a model package from its zip: verified before it replaces anything, nothing left half-done."""
import os

import pytest
from zip_rewrite import rewrite_zip

from rsgen_qgis.core.errors import ModelPackageError
from rsgen_qgis.core.runtime.install import install_zip
from rsgen_qgis.core.runtime.models import discover, sha256_file


@pytest.fixture
def model_zip(tiny_model_zip):
    return tiny_model_zip


def listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_install_then_found_and_verified(model_zip, tmp_path):
    dest = tmp_path / "models"
    pkg = install_zip(model_zip, str(dest))
    assert pkg.id == "rsgen-tiny" and pkg.path == str(dest / "rsgen-tiny")
    assert listing(dest) == ["rsgen-tiny"]  # no staging folder left
    assert [p.id for p in discover([str(dest)]) if p.path.startswith(str(dest))] == ["rsgen-tiny"]


def test_reinstall_replaces_the_old_copy(model_zip, tmp_path):
    dest = tmp_path / "models"
    install_zip(model_zip, str(dest))
    (dest / "rsgen-tiny" / "stale.txt").write_text("from the old install")
    install_zip(model_zip, str(dest))
    assert listing(dest) == ["rsgen-tiny"] and not (dest / "rsgen-tiny" / "stale.txt").exists()


def test_a_damaged_zip_changes_nothing(model_zip, tmp_path):
    dest = tmp_path / "models"
    install_zip(model_zip, str(dest))
    before = {f: sha256_file(str(dest / "rsgen-tiny" / f)) for f in listing(dest / "rsgen-tiny")}

    def flip(name, data):
        if name.endswith("denoiser.onnx"):
            data = data[:-1] + bytes([data[-1] ^ 1])
        return [(name, data)]
    bad = rewrite_zip(model_zip, str(tmp_path / "bad.zip"), flip)
    with pytest.raises(ModelPackageError, match="sha256 does not match"):
        install_zip(bad, str(dest))
    assert listing(dest) == ["rsgen-tiny"]
    assert {f: sha256_file(str(dest / "rsgen-tiny" / f)) for f in listing(dest / "rsgen-tiny")} == before


@pytest.mark.parametrize("extra, message", [("../evil.txt", "outside the model folder"),
                                            ("/etc/evil", "outside the model folder"),
                                            ("other/readme.txt", "one folder")])
def test_entries_outside_the_one_folder_are_refused(model_zip, tmp_path, extra, message):
    def add(name, data):
        return [(name, data)] + ([(extra, b"x")] if name.endswith("manifest.json") else [])
    bad = rewrite_zip(model_zip, str(tmp_path / "bad.zip"), add)
    dest = tmp_path / "models"
    with pytest.raises(ModelPackageError, match=message):
        install_zip(bad, str(dest))
    assert listing(dest) == [] and not (tmp_path / "evil.txt").exists()


def test_not_a_zip_or_not_a_package(model_zip, tmp_path):
    dest = tmp_path / "models"
    junk = tmp_path / "model.zip"
    junk.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(ModelPackageError, match="not a readable zip"):
        install_zip(str(junk), str(dest))
    no_manifest = rewrite_zip(model_zip, str(tmp_path / "nm.zip"),
                          lambda n, d: [] if n.endswith("manifest.json") else [(n, d)])
    with pytest.raises(ModelPackageError, match="no manifest.json"):
        install_zip(no_manifest, str(dest))
    assert listing(dest) == []


def test_cli_install_model(model_zip, tmp_path, capsys):
    from rsgen_qgis import cli

    dest = tmp_path / "models"
    assert cli.main(["install-model", model_zip, "--dest", str(dest)]) == 0
    assert "installed rsgen-tiny" in capsys.readouterr().out
    assert cli.main(["models", "--model-dir", str(dest)]) == 0
    assert str(dest / "rsgen-tiny") in capsys.readouterr().out
    assert cli.main(["install-model", str(tmp_path / "missing.zip"), "--dest", str(dest)]) == 2
    assert "not a readable zip" in capsys.readouterr().err
