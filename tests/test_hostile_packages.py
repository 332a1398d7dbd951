"""A model package is untrusted input (issue 20): its id is one safe folder name, every file the run time opens is
a listed, hashed file inside the package folder, and a broken package is skipped with a message, never stopping the
others (malformed manifests) nor silently replaced by another of the same id."""
import json
import logging
import os
import shutil

import pytest
from zip_rewrite import rewrite_zip

from rsgen_qgis.core.runtime import models
from rsgen_qgis.core.errors import ModelPackageError
from rsgen_qgis.core.runtime.install import install_zip
from rsgen_qgis.core.runtime.models import discover, find, load, read_package, sha256_file

CPU = ["CPUExecutionProvider"]


def edit_manifest(pkg_dir, change):
    path = os.path.join(pkg_dir, "manifest.json")
    with open(path) as f:
        m = json.load(f)
    change(m)
    with open(path, "w") as f:
        json.dump(m, f)
    return m


def with_id(new_id):
    def change(name, data):
        if name.endswith("manifest.json"):
            m = json.loads(data)
            m["id"] = new_id
            data = json.dumps(m).encode()
        return [(name, data)]
    return change


# -- 1. install-model: the id is one safe folder name, checked before anything is written ----------------------
@pytest.mark.parametrize("bad_id", ["../escaped", "..", ".", "sub/dir", "/tmp/abs", "../../lib/python3/usercustomize",
                                    "..\\escaped", "", ".hidden"])
def test_an_escaping_id_writes_nothing(tiny_model_zip, tmp_path, bad_id):
    dest = tmp_path / "place" / "models"
    (tmp_path / "place" / "escaped").mkdir(parents=True)
    (tmp_path / "place" / "escaped" / "mine.txt").write_text("the user's own file")
    bad = rewrite_zip(tiny_model_zip, str(tmp_path / "bad.zip"), with_id(bad_id))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ModelPackageError, match="one safe folder name"):
        install_zip(bad, str(dest))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # not even the models folder was made
    assert (tmp_path / "place" / "escaped" / "mine.txt").read_text() == "the user's own file"


def test_cli_install_model_refuses_an_escaping_id(tiny_model_zip, tmp_path, capsys):
    from rsgen_qgis import cli

    bad = rewrite_zip(tiny_model_zip, str(tmp_path / "bad.zip"), with_id("../escaped"))
    assert cli.main(["install-model", bad, "--dest", str(tmp_path / "models")]) == 2
    assert "one safe folder name" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "models").exists()


# -- 3. duplicate entries in a model zip ------------------------------------------------------------------------
def test_duplicate_zip_entries_are_refused(tiny_model_zip, tmp_path):
    def twice(name, data):
        return [(name, data)] + ([(name, b"not the verified graph")] if name.endswith("denoiser.onnx") else [])
    with pytest.warns(UserWarning, match="Duplicate name"):
        bad = rewrite_zip(tiny_model_zip, str(tmp_path / "dup.zip"), twice)
    with pytest.raises(ModelPackageError, match="twice"):
        install_zip(bad, str(tmp_path / "models"))
    assert not (tmp_path / "models").exists() or os.listdir(tmp_path / "models") == []


# -- 2. every file the run time opens: listed, hashed, inside the package ---------------------------------------
@pytest.fixture
def outside(tiny_package_copy, tmp_path):
    """A copy of the package's vocab and denoiser outside its folder (same bytes, so their hashes match)."""
    out = tmp_path / "elsewhere"
    out.mkdir()
    for name in ("vocab.txt", "denoiser.onnx"):
        shutil.copy(os.path.join(tiny_package_copy, name), out / name)
    return out


def test_absolute_vocab_is_refused_before_it_is_read(tiny_package_copy, outside, monkeypatch):
    from rsgen_qgis.core.runtime import tokenizer

    read = []
    real = tokenizer.load_vocab
    monkeypatch.setattr(tokenizer, "load_vocab", lambda p: read.append(p) or real(p))
    edit_manifest(tiny_package_copy, lambda m: m["tokenizer"].update(vocab=str(outside / "vocab.txt")))
    with pytest.raises(ModelPackageError, match="tokenizer.vocab.*not a plain file name"):
        load(tiny_package_copy, providers=CPU)
    assert read == []


@pytest.mark.parametrize("key", ["int8_file", "fp16_file"])
def test_a_graph_outside_the_package_is_never_loaded(tiny_package_copy, outside, monkeypatch, key):
    import onnxruntime as ort

    opened = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda path, *a, **k: opened.append(path) or real(path, *a, **k))
    digest = sha256_file(str(outside / "denoiser.onnx"))
    for name in ("../elsewhere/denoiser.onnx", str(outside / "denoiser.onnx")):
        def change(m):
            m["graphs"]["denoiser"][key] = name
            m["files"][name] = {"sha256": digest}
        edit_manifest(tiny_package_copy, change)
        with pytest.raises(ModelPackageError, match="not a plain file name"):
            load(tiny_package_copy, providers=CPU)
    assert not [p for p in opened if "elsewhere" in str(p)]


def test_an_unlisted_graph_is_never_loaded(tiny_package_copy):
    shutil.copy(os.path.join(tiny_package_copy, "denoiser.onnx"), os.path.join(tiny_package_copy, "extra.onnx"))
    edit_manifest(tiny_package_copy, lambda m: m["graphs"]["denoiser"].update(int8_file="extra.onnx"))
    with pytest.raises(ModelPackageError, match="int8_file.*not listed under 'files'"):
        read_package(tiny_package_copy)


def test_the_file_door_refuses_what_the_manifest_does_not_list(tiny_package_copy):
    """Any block a later manifest adds (an autoencoder's decoder, say) goes through the same door."""
    pkg = read_package(tiny_package_copy)
    assert pkg.file("vocab.txt") == os.path.join(tiny_package_copy, "vocab.txt")
    shutil.copy(os.path.join(tiny_package_copy, "vocab.txt"), os.path.join(tiny_package_copy, "taef2_decoder.onnx"))
    for name, message in (("taef2_decoder.onnx", "not list it under 'files'"), ("../rsgen-tiny/vocab.txt", "outside"),
                          ("/etc/passwd", "outside"), ("", "outside")):
        with pytest.raises(ModelPackageError, match=message):
            pkg.file(name)
    edit_manifest(tiny_package_copy, lambda m: m.update(autoencoder={"decoder_file": "taef2_decoder.onnx"}))
    with pytest.raises(ModelPackageError, match="autoencoder.decoder_file"):
        read_package(tiny_package_copy)


def test_a_changed_file_is_refused_when_opened(tiny_package_copy):
    pkg = read_package(tiny_package_copy)
    with open(os.path.join(tiny_package_copy, "vocab.txt"), "a") as f:
        f.write("[EXTRA]\n")
    with pytest.raises(ModelPackageError, match="the file is corrupt"):
        pkg.file("vocab.txt")


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_links_inside_a_package_are_not_followed(tiny_package_copy, outside, target):
    vocab = os.path.join(tiny_package_copy, "vocab.txt")
    if target == "inside":
        os.replace(vocab, os.path.join(tiny_package_copy, "real_vocab.txt"))
        os.symlink("real_vocab.txt", vocab)
    else:
        os.remove(vocab)
        os.symlink(str(outside / "vocab.txt"), vocab)
    assert sha256_file(vocab) == read_package(tiny_package_copy).manifest["files"]["vocab.txt"]["sha256"]
    with pytest.raises(ModelPackageError, match="is a link"):
        load(tiny_package_copy, providers=CPU)


def test_an_unlisted_link_in_the_package_is_refused(tiny_package_copy, outside):
    """A graph may read files the manifest does not list (ONNX external data): no link may sit in the folder."""
    os.symlink(str(outside / "vocab.txt"), os.path.join(tiny_package_copy, "denoiser.onnx.data"))
    with pytest.raises(ModelPackageError, match="denoiser.onnx.data: is a link"):
        load(tiny_package_copy, providers=CPU)


# -- 4. a malformed manifest anywhere on the search path is skipped; the others keep working -------------------
MALFORMED = {
    "graphs as a list": lambda m: m.update(graphs=[m["graphs"]["denoiser"]]),
    "graph as text": lambda m: m["graphs"].update(denoiser="denoiser.onnx"),
    "tile size 0": lambda m: m["tile"].update(size=0),
    "tile size -64": lambda m: m["tile"].update(size=-64),
    "tile size 1e6": lambda m: m["tile"].update(size=1e6),
    "files as a list": lambda m: m.update(files=list(m["files"])),
    "scheduler as text": lambda m: m.update(scheduler="cosine"),
    "layout classes as text": lambda m: m["conditions"].update(layout_classes="road"),
    "cond_dim as text": lambda m: m["conditions"].update(cond_dim="47"),
    "graph file a number": lambda m: m["graphs"]["denoiser"].update(file=3),
    "not a mapping": lambda m: m.clear() or m.update(x=[]),
}


@pytest.fixture
def broken_dir(tiny_model_dir, tmp_path):
    """A models folder holding a good package and a broken one (filled in by the test)."""
    root = tmp_path / "mixed"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), root / "rsgen-tiny")
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), root / "broken")
    edit_manifest(str(root / "broken"), lambda m: m.update(id="broken"))
    return root


@pytest.mark.parametrize("what", list(MALFORMED))
def test_a_malformed_manifest_is_skipped_with_its_name(broken_dir, what, caplog):
    edit_manifest(str(broken_dir / "broken"), MALFORMED[what])
    errors = []
    with caplog.at_level(logging.WARNING, logger="rsgen_qgis"):
        found = [p.id for p in discover([str(broken_dir)], errors)]
    assert "rsgen-tiny" in found and "broken" not in found
    assert len(errors) == 1 and str(broken_dir / "broken" / "manifest.json") in errors[0]
    assert find("rsgen-tiny", [str(broken_dir)]).path == str(broken_dir / "rsgen-tiny")


def test_the_skip_is_logged_once(broken_dir, caplog):
    edit_manifest(str(broken_dir / "broken"), MALFORMED["graphs as a list"])
    models._reported.clear()
    with caplog.at_level(logging.WARNING, logger="rsgen_qgis"):
        discover([str(broken_dir)])
        discover([str(broken_dir)])
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "broken" in skipped[0] and "graphs: expected a mapping" in skipped[0]


def test_cli_models_lists_the_good_and_names_the_skipped(broken_dir, capsys):
    from rsgen_qgis import cli

    edit_manifest(str(broken_dir / "broken"), MALFORMED["tile size 0"])
    assert cli.main(["models", "--model-dir", str(broken_dir)]) == 0
    out, err = capsys.readouterr()
    assert "rsgen-tiny" in out and "skipped:" in err and "tile.size" in err and str(broken_dir / "broken") in err


def test_processing_lists_the_models_beside_a_broken_one(broken_dir, qgis_processing, monkeypatch):
    from qgis.core import QgsApplication

    from rsgen_qgis import settings
    from rsgen_qgis.processing.provider import RsgenProvider

    edit_manifest(str(broken_dir / "broken"), MALFORMED["graph as text"])
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, str(broken_dir))
    logged = []
    QgsApplication.messageLog().messageReceived.connect(lambda msg, tag, level: logged.append((tag, msg)))
    registry = QgsApplication.processingRegistry()
    p = RsgenProvider()
    assert registry.addProvider(p)
    try:
        alg = registry.createAlgorithmById("rsgen:generate")
        assert alg is not None and "rsgen-tiny" in alg.parameterDefinition("MODEL").options()
    finally:
        registry.removeProvider(p)
    assert [m for t, m in logged if t == "rsgen" and "skipped" in m and str(broken_dir / "broken") in m]


# -- 5. a broken package with the same id as a good one later on the path: refused, not silently replaced -------
def test_a_broken_package_is_not_silently_replaced(tiny_model_dir, tmp_path, capsys):
    from rsgen_qgis import cli

    mine = tmp_path / "mine" / "rsgen-tiny"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), mine)
    edit_manifest(str(mine), MALFORMED["graphs as a list"])
    with pytest.raises(ModelPackageError) as err:
        find("rsgen-tiny", [str(tmp_path / "mine"), tiny_model_dir])
    text = str(err.value)
    assert f"is {mine}, the first" in text and "broken" in text and "graphs: expected a mapping" in text
    assert os.path.join(tiny_model_dir, "rsgen-tiny") in text and "was not used" in text
    out = tmp_path / "x.tif"
    rc = cli.main(["generate", "--extent", "0,0,320,320", "--crs", "EPSG:32633", "--gsd", "10", "--steps", "1",
                   "--model", "rsgen-tiny", "--model-dir", str(tmp_path / "mine"), "--model-dir", tiny_model_dir,
                   "--out", str(out), "--quiet"])
    assert rc == 2 and str(mine) in capsys.readouterr().err and not out.exists()
    # an unreadable manifest claims the id of its folder
    (mine / "manifest.json").write_text("{ not json")
    with pytest.raises(ModelPackageError, match="cannot read the manifest"):
        find("rsgen-tiny", [str(tmp_path / "mine"), tiny_model_dir])


@pytest.mark.slow
def test_the_bundled_model_generates_beside_a_malformed_package(broken_dir, real_model, tmp_path, monkeypatch,
                                                                 caplog):
    """The issue's case: one bad manifest on the search path; the CLI and qgis_process still list and run the
    bundled model, and both name the skipped package."""
    import rasterio

    from rsgen_qgis import cli, settings
    from tests.test_processing import EXTENT, ROOT, qgis_process, qgis_process_env

    edit_manifest(str(broken_dir / "broken"), MALFORMED["graph as text"])
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, str(broken_dir))
    out = tmp_path / "cli.tif"
    with caplog.at_level(logging.WARNING, logger="rsgen_qgis"):  # the CLI has no handler: Python prints it
        assert cli.main(["generate", "--extent", "453000,6233600,454600,6235200", "--crs", "EPSG:32734", "--gsd",
                         "50", "--steps", "2", "--model", "rsgen-base", "--prompt", "farmland", "--out", str(out),
                         "--quiet"]) == 0
    assert any("skipped" in r.getMessage() and str(broken_dir / "broken") in r.getMessage() for r in caplog.records)
    with rasterio.open(out) as ds:
        assert ds.tags()["model_id"] == "rsgen-base"
    env = qgis_process_env(ROOT, tmp_path / "profile", broken_dir)
    rc, log = qgis_process(env, "plugins", "enable", "rsgen_qgis")
    assert rc == 0, log
    rc, log = qgis_process(env, "list")
    assert rc == 0 and "rsgen:generate" in log, log
    out = tmp_path / "qp.tif"
    rc, log = qgis_process(env, "run", "rsgen:generate", "--", f"EXTENT={EXTENT}", "GSD=50", "PROMPT=farmland",
                           "MODEL=rsgen-base", "STEPS=2", f"OUTPUT={out}")
    assert rc == 0 and out.exists(), log
    assert str(broken_dir / "broken") in log  # the skipped package is named


def test_autoencoder_packages_and_latent_models_pass_the_schema(tiny_package_copy):
    """The schema knows the other kinds: an autoencoder package, and a latent rsgen model naming one (whose id
    becomes a folder name beside the model, so it is one safe folder name too)."""
    from rsgen_qgis.core.runtime.manifest_schema import check_manifest

    sha = "0" * 64
    ae = {"format": models.FORMAT, "id": "taef2", "kind": "autoencoder",
          "files": {"dec.onnx": {"sha256": sha}, "enc.onnx": {"sha256": sha}},
          "autoencoder": {"factor": 8, "channels": 32, "decoder": {"file": "dec.onnx"},
                          "encoder": {"file": "enc.onnx", "input": "image"},
                          "latent_stats": {"shift": [0.0] * 32, "scale": [1.0] * 32},
                          "window": {"latent_tile": 32, "latent_overlap": 8}, "image_range": [0.0, 1.0]}}
    check_manifest(ae, "ae")
    with pytest.raises(ModelPackageError, match=r"autoencoder.encoder.file.*not listed"):
        check_manifest(dict(ae, files={"dec.onnx": {"sha256": sha}}), "ae")
    with open(os.path.join(tiny_package_copy, "manifest.json")) as f:
        m = json.load(f)
    m.update(kind="latent", autoencoder={"package": "taef2", "factor": 8, "channels": 32, "decoder_sha256": sha})
    check_manifest(m, "latent")
    m["autoencoder"]["package"] = "../../elsewhere"
    with pytest.raises(ModelPackageError, match=r"autoencoder.package.*one safe folder name"):
        check_manifest(m, "latent")
