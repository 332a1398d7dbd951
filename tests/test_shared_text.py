"""A package may name the text encoder of another installed package instead of carrying a copy
(graphs.text_encoder.package, tokenizer.package; core/runtime/references.py): it generates exactly what the same
package with its own copy generates, and every way the reference can be wrong or hostile is refused, naming the
package or the file."""
import json
import os
import shutil

import numpy as np
import pytest
import rasterio

from rsgen_qgis import settings
from rsgen_qgis.core.engine.generate import generate
from rsgen_qgis.core.errors import ModelPackageError
from rsgen_qgis.core.request import GenerationRequest
from rsgen_qgis.core.runtime.manifest_schema import check_manifest
from rsgen_qgis.core.runtime.models import discover, load, read_package, sha256_file

CPU = ["CPUExecutionProvider"]
X0, Y0 = 453000.0, 6233600.0
OWN, SHARED = "rsgen-tiny", "rsgen-tiny-shared"
LATENT, LATENT_SHARED = "rsgen-tiny-latent", "rsgen-tiny-latent-shared"


@pytest.fixture(scope="module")
def shared_dir(tiny_model_dir, tiny_latent_dir, tmp_path_factory):
    """rsgen-tiny (its own text encoder), rsgen-tiny-shared (the same denoiser weights, the text encoder named in
    rsgen-tiny), rsgen-tiny-latent (its own copy), rsgen-tiny-latent-shared (same weights, text from rsgen-tiny)
    and taef2, side by side."""
    from rsgen_qgis.training.export import build_tiny_package

    root = tmp_path_factory.mktemp("shared_text")
    shutil.copytree(os.path.join(tiny_model_dir, OWN), root / OWN)
    for name in (LATENT, "taef2"):
        shutil.copytree(os.path.join(tiny_latent_dir, name), root / name)
    build_tiny_package(str(root / SHARED), model_id=SHARED, text_from=str(root / OWN))  # seed 0, as rsgen-tiny
    build_tiny_package(str(root / LATENT_SHARED), seed=3, model_id=LATENT_SHARED, autoencoder_dir=str(root / "taef2"),
                       text_from=str(root / OWN))  # seed 3, as rsgen-tiny-latent
    return root


@pytest.fixture
def pkgs(shared_dir, tmp_path, monkeypatch):
    """A private copy of the packages that a test may damage (nothing else on the search path)."""
    monkeypatch.delenv(settings.ENV_MODEL_DIRS, raising=False)
    dst = tmp_path / "pkgs"
    shutil.copytree(shared_dir, dst)
    return dst


def manifest(folder):
    with open(os.path.join(folder, "manifest.json")) as f:
        return json.load(f)


def edit(folder, change):
    m = manifest(folder)
    change(m)
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(m, f)
    return m


def request(tmp_path, name, model, **kw):
    kw = {"prompt": "houses and roads", "seed": 4, "steps": 2, "sampler": "ddim", "guidance": 2.0, **kw}
    return GenerationRequest(extent=(X0, Y0, X0 + 96 * 4.0, Y0 + 80 * 4.0), crs="EPSG:32734", gsd=4.0,
                             output=str(tmp_path / name), model=model, **kw)


def pixels(path):
    with rasterio.open(path) as ds:
        return ds.read()


# -- the reference: written by export, read by the run time --------------------------------------------------
def test_the_manifest_names_the_text_encoder_instead_of_carrying_it(shared_dir):
    own, shared = manifest(shared_dir / OWN), manifest(shared_dir / SHARED)
    g = shared["graphs"]["text_encoder"]
    assert g["package"] == OWN and g["file"] == "text_encoder.onnx"
    assert g["sha256"] == own["files"]["text_encoder.onnx"]["sha256"]
    assert g["outputs"] == own["graphs"]["text_encoder"]["outputs"]
    tok = shared["tokenizer"]
    assert tok["package"] == OWN and tok["vocab"] == "vocab.txt"
    assert tok["vocab_sha256"] == own["files"]["vocab.txt"]["sha256"]
    assert sorted(shared["files"]) == ["denoiser.onnx"]
    assert sorted(os.listdir(shared_dir / SHARED)) == ["denoiser.onnx", "manifest.json"]
    assert shared["files"]["denoiser.onnx"] == own["files"]["denoiser.onnx"]  # the same weights
    assert shared["conditions"] == own["conditions"]


@pytest.mark.parametrize("own, shared", [(OWN, SHARED), (LATENT, LATENT_SHARED)])
def test_a_referencing_package_generates_the_same_bytes(shared_dir, tmp_path, own, shared):
    """The same denoiser with its own copy of the text encoder and with the text encoder named in rsgen-tiny."""
    mo, ms = manifest(shared_dir / own), manifest(shared_dir / shared)
    assert mo["files"]["denoiser.onnx"] == ms["files"]["denoiser.onnx"]
    assert mo["files"]["text_encoder.onnx"]["sha256"] == ms["graphs"]["text_encoder"]["sha256"]
    md = [str(shared_dir)]
    a = generate(request(tmp_path, "own.tif", own), model_dirs=md, providers=CPU)
    b = generate(request(tmp_path, "shared.tif", shared), model_dirs=md, providers=CPU)
    assert np.array_equal(pixels(a.path), pixels(b.path))
    other = generate(request(tmp_path, "other.tif", shared, prompt="a lake"), model_dirs=md, providers=CPU)
    assert not np.array_equal(pixels(b.path), pixels(other.path))  # the prompt reaches the denoiser


def test_the_named_package_is_found_beside_then_on_the_search_path(pkgs, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.replace(pkgs / OWN, elsewhere / OWN)
    with pytest.raises(ModelPackageError, match="not installed"):
        load(str(pkgs / SHARED), providers=CPU)
    m = load(SHARED, [str(pkgs), str(elsewhere)], providers=CPU)
    assert m.text_encoder.embed(["houses"]).shape == (1, 32)


# -- refused: not installed, another file under the same id, escaping names, links, chains and cycles ----------
def test_a_missing_package_is_named_with_how_to_install_it(pkgs):
    shutil.rmtree(pkgs / OWN)
    with pytest.raises(ModelPackageError) as err:
        load(SHARED, [str(pkgs)], providers=CPU)
    text = str(err.value)
    assert f"model '{SHARED}' takes its text encoder from the package '{OWN}', which is not installed" in text
    assert f"install-model {OWN}.zip" in text and str(pkgs / SHARED / "manifest.json") in text


@pytest.mark.parametrize("key, file", [("sha256", "text_encoder.onnx"), ("vocab_sha256", "vocab.txt")])
def test_another_pin_is_refused_naming_the_file(pkgs, key, file):
    where = (lambda m: m["graphs"]["text_encoder"]) if key == "sha256" else (lambda m: m["tokenizer"])
    edit(pkgs / SHARED, lambda m: where(m).update({key: "0" * 64}))
    with pytest.raises(ModelPackageError, match=rf"{OWN}/{file}: not the file model '{SHARED}' was made with"):
        load(SHARED, [str(pkgs)], providers=CPU)


def test_a_swapped_file_under_the_same_id_is_refused_naming_it(pkgs):
    """Another vocabulary in rsgen-tiny: with its manifest left as it was (corrupt), and with its manifest updated
    (another version of the package): both refused, naming the file."""
    vocab = pkgs / OWN / "vocab.txt"
    lines = vocab.read_bytes().splitlines(keepends=True)
    vocab.write_bytes(b"".join([lines[1], lines[0]] + lines[2:]))  # same size, other token ids
    with pytest.raises(ModelPackageError, match=rf"{OWN}/vocab.txt: sha256 does not match"):
        load(SHARED, [str(pkgs)], providers=CPU)
    edit(pkgs / OWN, lambda m: m["files"]["vocab.txt"].update(sha256=sha256_file(str(vocab)),
                                                              bytes=os.path.getsize(vocab)))
    load(OWN, [str(pkgs)], providers=CPU)  # a sound package of its own
    with pytest.raises(ModelPackageError, match=rf"{OWN}/vocab.txt: not the file model '{SHARED}' was made with"):
        load(SHARED, [str(pkgs)], providers=CPU)


ESCAPES = {
    "package ../": (lambda m: m["graphs"]["text_encoder"].update(package=f"../{OWN}"),
                    r"graphs.text_encoder.package: '\.\./rsgen-tiny' is not one safe folder name"),
    "package absolute": (lambda m: m["graphs"]["text_encoder"].update(package="/tmp/rsgen-tiny"),
                         r"graphs.text_encoder.package: '/tmp/rsgen-tiny' is not one safe folder name"),
    "file ../": (lambda m: m["graphs"]["text_encoder"].update(file=f"../{OWN}/text_encoder.onnx"),
                 r"graphs.text_encoder.file: .* is not a plain file name"),
    "vocab absolute": (lambda m: m["tokenizer"].update(vocab="/etc/passwd"),
                       r"tokenizer.vocab: '/etc/passwd' is not a plain file name"),
    "tokenizer package ../": (lambda m: m["tokenizer"].update(package="../x"),
                              r"tokenizer.package: '\.\./x' is not one safe folder name"),
}


@pytest.mark.parametrize("what", sorted(ESCAPES))
def test_a_reference_that_escapes_is_refused_before_anything_is_opened(pkgs, what, monkeypatch):
    import onnxruntime as ort

    opened = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda p, *a, **k: opened.append(p) or real(p, *a, **k))
    change, message = ESCAPES[what]
    edit(pkgs / SHARED, change)
    with pytest.raises(ModelPackageError, match=message):
        load(SHARED, [str(pkgs)], providers=CPU)
    assert opened == []
    assert SHARED not in [p.id for p in discover([str(pkgs)])]


@pytest.mark.parametrize("where", ["listed file", "unlisted file"])
def test_a_link_in_the_named_package_is_refused(pkgs, tmp_path, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    if where == "listed file":  # same bytes, so its hash matches: only the link is wrong
        shutil.copy(pkgs / OWN / "text_encoder.onnx", outside / "text_encoder.onnx")
        os.remove(pkgs / OWN / "text_encoder.onnx")
        os.symlink(outside / "text_encoder.onnx", pkgs / OWN / "text_encoder.onnx")
        message = rf"{OWN}/text_encoder.onnx: is a link"
    else:
        (outside / "weights").write_bytes(b"\0" * 16)
        os.symlink(outside / "weights", pkgs / OWN / "text_encoder.onnx.data")
        message = rf"{OWN}/text_encoder.onnx.data: is a link"
    with pytest.raises(ModelPackageError, match=message):
        load(SHARED, [str(pkgs)], providers=CPU)


def test_one_level_only(pkgs):
    """A package that itself takes its text encoder from elsewhere cannot be named: no chain, no cycle."""
    from rsgen_qgis.training.export import text_reference

    ref = text_reference(str(pkgs / OWN))  # rsgen-tiny's own text encoder, named
    # a chain: rsgen-tiny-latent-shared -> rsgen-tiny-shared -> rsgen-tiny
    edit(pkgs / LATENT_SHARED, lambda m: (m["graphs"]["text_encoder"].update(package=SHARED),
                                          m["tokenizer"].update(package=SHARED)))
    with pytest.raises(ModelPackageError, match=rf"takes its text encoder from the package '{SHARED}'; no installed "
                                                rf"package with that id fits: .*takes its own text encoder from "
                                                rf"'{OWN}' \(one level only"):
        load(LATENT_SHARED, [str(pkgs)], providers=CPU)
    # a cycle: rsgen-tiny-shared -> rsgen-tiny -> rsgen-tiny-shared
    def to_shared(m):
        m["graphs"]["text_encoder"] = dict(ref["graph"], package=SHARED)
        m["tokenizer"] = dict(ref["tokenizer"], package=SHARED)
    edit(pkgs / OWN, to_shared)
    for model in (SHARED, OWN):
        with pytest.raises(ModelPackageError, match="one level only"):
            load(model, [str(pkgs)], providers=CPU)
    # itself
    edit(pkgs / SHARED, lambda m: (m["graphs"]["text_encoder"].update(package=SHARED),
                                   m["tokenizer"].update(package=SHARED)))
    with pytest.raises(ModelPackageError, match="graphs.text_encoder.package: 'rsgen-tiny-shared' is this package's "
                                                "own id"):
        read_package(str(pkgs / SHARED))


@pytest.mark.parametrize("change, message", [
    (lambda m: (m["graphs"]["text_encoder"].update(package="taef2"), m["tokenizer"].update(package="taef2")),
     r"no installed package with that id fits: .*taef2: it has no rsgen text encoder of its own"),
    (lambda m: m["tokenizer"].update(package=LATENT), r"tokenizer.package: the vocabulary must come from the text "
                                                      r"encoder's package 'rsgen-tiny', not 'rsgen-tiny-latent'"),
    (lambda m: m["tokenizer"].pop("vocab_sha256"), r"tokenizer: the key 'vocab_sha256' is missing"),
    (lambda m: m["graphs"]["text_encoder"].pop("sha256"), r"graphs.text_encoder: the key 'sha256' is missing"),
    (lambda m: m["graphs"]["text_encoder"].update(fp16_file="text_encoder.onnx"),
     r"graphs.text_encoder.fp16_file: a text encoder taken from another package is one file"),
])
def test_an_incomplete_or_mismatched_reference_is_refused(pkgs, change, message):
    edit(pkgs / SHARED, change)
    with pytest.raises(ModelPackageError, match=message):
        load(SHARED, [str(pkgs)], providers=CPU)


def test_a_tokenizer_named_without_its_text_encoder_is_refused(pkgs):
    m = manifest(pkgs / OWN)
    m["tokenizer"]["package"] = LATENT
    with pytest.raises(ModelPackageError, match="tokenizer.package: a tokenizer is taken from another package only"):
        check_manifest(m, "m")


# -- doors: install from a zip, the CLI and Processing listings, export ----------------------------------------
@pytest.fixture
def zips(pkgs, tmp_path):
    """rsgen-tiny.zip and rsgen-tiny-shared.zip as `make package` writes model zips."""
    import package  # tools/package.py

    src = tmp_path / "to_zip"
    for name in (OWN, SHARED):
        shutil.copytree(pkgs / name, src / name)
    return {os.path.basename(z)[:-len(".zip")]: z for z in package.build_model_zips(str(tmp_path / "zips"), str(src))}


def test_a_referencing_zip_installs_and_runs_once_the_named_package_is_there(zips, tmp_path, capsys):
    from rsgen_qgis import cli

    dest = tmp_path / "installed"
    assert cli.main(["install-model", zips[SHARED], "--dest", str(dest)]) == 0
    out, err = capsys.readouterr()
    assert f"installed {SHARED}" in out
    assert "cannot run yet" in err and f"from the package '{OWN}', which is not installed" in err
    args = ["generate", "--extent", "453000,6233600,453384,6233920", "--crs", "EPSG:32734", "--gsd", "4", "--steps",
            "1", "--prompt", "houses", "--model", SHARED, "--model-dir", str(dest), "--quiet"]
    assert cli.main(args + ["--out", str(tmp_path / "no.tif")]) == 2
    assert f"'{OWN}', which is not installed" in capsys.readouterr().err and not (tmp_path / "no.tif").exists()
    assert cli.main(["models", "--model-dir", str(dest)]) == 0
    out, err = capsys.readouterr()
    assert SHARED in out and f"[text encoder from {OWN}]" in out and f"'{OWN}', which is not installed" in err
    assert cli.main(["install-model", zips[OWN], "--dest", str(dest)]) == 0
    assert "cannot run yet" not in capsys.readouterr().err
    assert cli.main(args + ["--out", str(tmp_path / "yes.tif")]) == 0
    assert pixels(tmp_path / "yes.tif").std() > 0
    assert cli.main(["models", "--model-dir", str(dest)]) == 0
    assert "cannot run yet" not in capsys.readouterr().err


def test_processing_lists_and_runs_a_referencing_package(qgis_processing, pkgs, tmp_path, monkeypatch):
    import processing
    from qgis.core import QgsApplication, QgsSettings

    from rsgen_qgis.processing.provider import RsgenProvider

    QgsSettings().remove("rsgen_qgis")
    registry = QgsApplication.processingRegistry()
    prov = RsgenProvider()
    assert registry.addProvider(prov)
    try:
        settings.set_model_dirs([str(pkgs)])
        alg = registry.createAlgorithmById("rsgen:generate")
        assert {SHARED, LATENT_SHARED} <= set(alg.parameterDefinition("MODEL").options())
        res = processing.run("rsgen:generate", {"EXTENT": "453000,453384,6233600,6233920 [EPSG:32734]", "GSD": 4.0,
                                                "PROMPT": "houses", "MODEL": LATENT_SHARED, "SEED": 1, "STEPS": 2,
                                                "OUTPUT": str(tmp_path / "proc.tif")})
        with rasterio.open(res["OUTPUT"]) as ds:
            assert ds.tags()["model_id"] == LATENT_SHARED and ds.read().std() > 0
    finally:
        registry.removeProvider(prov)
        QgsSettings().remove("rsgen_qgis")


def test_the_dock_lists_a_referencing_package(pkgs):
    from rsgen_qgis.gui import model_choices

    packages, hint, problems = model_choices([str(pkgs)])
    assert {SHARED, LATENT_SHARED} <= {p.id for p in packages} and not problems


def test_export_cli_writes_the_reference(pkgs, tmp_path):
    import torch

    from rsgen_qgis.training.export import main, tiny_config
    from rsgen_qgis.training.model import Denoiser
    from rsgen_qgis.training.train import SCHEDULE

    cfg = tiny_config()
    net = Denoiser(cfg)
    ckpt = tmp_path / "last.pt"
    torch.save({"config": cfg.to_dict(), "ema": net.state_dict(), "model": net.state_dict(), "step": 1,
                "elapsed_s": 1.0, "schedule": dict(SCHEDULE)}, ckpt)
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"id": "rsgen-exported", "name": "exported"}))
    out = pkgs / "rsgen-exported"
    main(["--checkpoint", str(ckpt), "--out", str(out), "--info", str(info), "--no-fp16",
          "--text-from", str(pkgs / OWN)])
    m = manifest(out)
    assert m["graphs"]["text_encoder"]["package"] == OWN and sorted(m["files"]) == ["denoiser.onnx"]
    assert load("rsgen-exported", [str(pkgs)], providers=CPU).text_encoder.dim == 32


def test_export_refuses_a_text_encoder_of_another_width_or_a_chain(pkgs, tmp_path):
    from rsgen_qgis.training.export import tiny_config, write_package
    from rsgen_qgis.training.model import Denoiser
    from rsgen_qgis.training.train import SCHEDULE

    wide = Denoiser(tiny_config(text_dim=48))
    with pytest.raises(ValueError, match=r"do not match the text encoder \(32 values\)"):
        write_package(str(tmp_path / "x"), wide, dict(SCHEDULE), model_id="x", name="x", fp16=False,
                      text_from=str(pkgs / OWN))
    net = Denoiser(tiny_config())
    with pytest.raises(ValueError, match="one level only"):
        write_package(str(tmp_path / "x"), net, dict(SCHEDULE), model_id="x", name="x", fp16=False,
                      text_from=str(pkgs / SHARED))
    with pytest.raises(ValueError, match="its own id"):
        write_package(str(tmp_path / "x"), net, dict(SCHEDULE), model_id=OWN, name="x", fp16=False,
                      text_from=str(pkgs / OWN))
    assert not (tmp_path / "x").exists()


def test_a_text_encoder_of_another_width_is_refused_at_run_time(pkgs):
    """Pins hold the file; the model's own condition layout must still take its width."""
    edit(pkgs / SHARED, lambda m: m["conditions"]["cond_layout"].update(text=[0, 48]))
    with pytest.raises(ModelPackageError, match=r"text_encoder.onnx: the text encoder gives 32 values per prompt; "
                                                r"model 'rsgen-tiny-shared' takes 48"):
        load(SHARED, [str(pkgs)], providers=CPU)


def test_the_cascade_base_of_a_referencing_package_takes_the_same_text_encoder(pkgs, tmp_path):
    import dataclasses

    import torch

    from rsgen_qgis.core.runtime.models import load_base
    from rsgen_qgis.training.cascade_base import add_cascade_base
    from rsgen_qgis.training.export import tiny_config
    from rsgen_qgis.training.model import Denoiser
    from rsgen_qgis.training.train import SCHEDULE

    cfg = dataclasses.replace(tiny_config(), tile=8)
    ckpt = tmp_path / "base.pt"
    torch.save({"ema": Denoiser(cfg).state_dict(), "config": cfg.to_dict(), "schedule": dict(SCHEDULE), "step": 1,
                "elapsed_s": 1.0}, ckpt)
    add_cascade_base(str(pkgs / SHARED), str(ckpt), (1.0, 80.0))
    base = manifest(pkgs / SHARED)["cascade_base"]["manifest"]
    assert base["graphs"]["text_encoder"]["package"] == OWN and sorted(base["files"]) == ["base_denoiser.onnx"]
    loaded = load_base(SHARED, [str(pkgs)], CPU)
    own = load(OWN, [str(pkgs)], providers=CPU)
    assert np.array_equal(loaded.text_encoder.embed(["houses"]), own.text_encoder.embed(["houses"]))


def test_the_dock_install_says_which_package_is_still_needed(zips, tmp_path, monkeypatch):
    from qgis.core import Qgis, QgsApplication, QgsSettings
    from qgis.PyQt.QtWidgets import QWidget

    from rsgen_qgis.gui.models_menu import ModelMenu

    monkeypatch.setattr(QgsApplication, "qgisSettingsDirPath", staticmethod(lambda: str(tmp_path / "profile")))
    QgsSettings().remove("rsgen_qgis")
    said, changed, parent = [], [], QWidget()
    menu = ModelMenu(parent, lambda: None, changed.append, lambda text, level, secs: said.append((level, text)))
    try:
        assert menu.install_zip(zips[SHARED]) and changed == [SHARED]
        level, text = said[-1]
        assert level == Qgis.MessageLevel.Warning and "Installed model" in text
        assert f"takes its text encoder from the package '{OWN}', which is not installed" in text
        assert menu.install_zip(zips[OWN])
        assert said[-1][0] == Qgis.MessageLevel.Success
        assert menu.install_zip(zips[SHARED]) and said[-1][0] == Qgis.MessageLevel.Success
    finally:
        QgsSettings().remove("rsgen_qgis")
        parent.deleteLater()
