"""Steps, guidance and sampler left out take the model package's own defaults at every door, as the dock does on
picking a model (core.runtime.sampling_defaults): the CLI, the batch runner and Processing. A value given is kept;
a manifest value a request would refuse is passed over for the engine's default."""
import json
import os
import subprocess
import sys

import pytest
import rasterio
import yaml

from rsgen_qgis.core.request import DEFAULT_SAMPLER
from rsgen_qgis.core.runtime.sampling_defaults import ENGINE_DEFAULTS, package_defaults, resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN = {"steps": 3, "guidance": 1.5, "sampler": "ddim"}  # none of them the engine's default


@pytest.fixture
def own_defaults(tiny_package_copy):
    """A copy of rsgen-tiny whose manifest names defaults of its own; returns its models folder."""
    path = os.path.join(tiny_package_copy, "manifest.json")
    with open(path) as f:
        m = json.load(f)
    m["defaults"] = dict(m.get("defaults") or {}, **OWN)
    with open(path, "w") as f:
        json.dump(m, f)
    return os.path.dirname(tiny_package_copy)


def recorded(path):
    with rasterio.open(path) as ds:
        t = ds.tags()
    return {"steps": int(t["steps"]), "guidance": float(t["guidance"]), "sampler": t["sampler"]}


def test_package_defaults_take_what_is_valid_and_nothing_else():
    assert package_defaults({"defaults": OWN}) == OWN
    assert ENGINE_DEFAULTS == {"steps": 20, "guidance": 3.0, "sampler": DEFAULT_SAMPLER}
    for broken in ({"steps": True, "guidance": "5", "sampler": "warp"}, {"steps": 0, "guidance": -1.0},
                   {"steps": 1001, "guidance": float("inf"), "sampler": None}, {"steps": 2.5, "guidance": False}):
        assert package_defaults({"defaults": broken}) == ENGINE_DEFAULTS, broken
    for manifest in ({}, {"defaults": None}, {"defaults": [1, 2]}, None, "text"):
        assert package_defaults(manifest) == ENGINE_DEFAULTS
    assert package_defaults({"defaults": {"guidance": 5}}) == dict(ENGINE_DEFAULTS, guidance=5.0)


def test_resolve_fills_only_what_is_missing(own_defaults):
    assert resolve("rsgen-tiny", [own_defaults]) == OWN
    assert resolve("rsgen-tiny", [own_defaults], steps=7) == dict(OWN, steps=7)
    assert resolve("rsgen-tiny", [own_defaults], guidance=0.0, sampler="euler") == dict(OWN, guidance=0.0,
                                                                                        sampler="euler")
    # all three given: the package is not even looked for
    assert resolve("no-such-model", [], 4, 2.0, "ddim") == {"steps": 4, "guidance": 2.0, "sampler": "ddim"}


def test_resolve_names_a_missing_model(tmp_path):
    from rsgen_qgis.core.errors import ModelPackageError

    with pytest.raises(ModelPackageError, match="no-such-model"):
        resolve("no-such-model", [str(tmp_path)])


def _cli(args, tmp_path):
    code = f"import sys\nfrom rsgen_qgis.cli import main\nsys.exit(main({args!r}))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def test_cli_takes_the_model_defaults(own_defaults, tmp_path):
    base = ["generate", "--extent", "453000,6233600,453128,6233728", "--crs", "EPSG:32734", "--gsd", "4",
            "--prompt", "houses", "--model", "rsgen-tiny", "--model-dir", own_defaults, "--quiet"]
    out = str(tmp_path / "own.tif")
    p = _cli(base + ["--out", out], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert recorded(out) == OWN
    given = str(tmp_path / "given.tif")
    p = _cli(base + ["--steps", "2", "--guidance", "1", "--sampler", "euler", "--out", given], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert recorded(given) == {"steps": 2, "guidance": 1.0, "sampler": "euler"}


def test_cli_names_a_missing_model_once(tmp_path):
    p = _cli(["generate", "--extent", "0,0,64,64", "--crs", "EPSG:32734", "--gsd", "1", "--model", "no-such-model",
              "--model-dir", str(tmp_path), "--quiet", "--out", str(tmp_path / "x.tif")], tmp_path)
    assert p.returncode != 0 and "no-such-model" in p.stderr and "Traceback" not in p.stderr
    assert not os.listdir(tmp_path)


def _job(tmp_path, own_defaults, **extra):
    job = {"output": str(tmp_path / "out"), "crs": "EPSG:32734", "gsd": 4.0, "model": "rsgen-tiny",
           "model_dirs": [own_defaults], "seed": 5, "prompt": "houses", "tile_px": 48, "block_windows": 2,
           "aois": {"bboxes": [{"bbox": [453000.0, 6233600.0, 453150.0, 6233700.0]}]}, **extra}
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(job))
    return str(p)


def test_batch_spec_leaves_them_to_the_model(own_defaults, tmp_path):
    from rsgen_qgis.batch import spec

    s = spec.load(_job(tmp_path, own_defaults))
    assert (s.steps, s.guidance, s.sampler) == (None, None, None)
    s = spec.load(_job(tmp_path, own_defaults, steps=4, guidance=0, sampler="euler"))
    assert (s.steps, s.guidance, s.sampler) == (4, 0.0, "euler")  # 0 is a value, kept
    with pytest.raises(spec.JobSpecError, match="sampler"):
        spec.load(_job(tmp_path, own_defaults, sampler="warp"))


@pytest.mark.parametrize("given", [{}, {"steps": 2, "guidance": 1.0, "sampler": "euler"}])
def test_batch_runner_takes_the_model_defaults(own_defaults, tmp_path, given):
    from rsgen_qgis.batch import runner, spec

    man = runner.run(spec.load(_job(tmp_path, own_defaults, **given)), workers=0, progress=False)
    want = dict(OWN, **given)
    assert {k: man["job"][k] for k in want} == want  # the manifest records what was run
    assert man["tiles"]
    for rec in man["tiles"].values():
        assert recorded(os.path.join(str(tmp_path / "out"), rec["path"])) == want


@pytest.mark.parametrize("given", [{}, {"STEPS": 2, "GUIDANCE": 1.0, "SAMPLER": "euler"}])
def test_processing_takes_the_model_defaults(qgis_processing, own_defaults, tmp_path, monkeypatch, given):
    import processing
    from qgis.core import QgsApplication, QgsSettings

    from rsgen_qgis import settings
    from rsgen_qgis.processing.provider import RsgenProvider

    monkeypatch.delenv(settings.ENV_MODEL_DIRS, raising=False)
    QgsSettings().remove("rsgen_qgis")
    registry = QgsApplication.processingRegistry()
    prov = RsgenProvider()
    assert registry.addProvider(prov)
    try:
        settings.set_model_dirs([own_defaults])
        alg = registry.createAlgorithmById("rsgen:generate")
        for name in ("STEPS", "GUIDANCE", "SAMPLER"):  # empty in the dialog and the Modeler: the model's default
            d = alg.parameterDefinition(name)
            assert d.defaultValue() is None and d.flags() & d.FlagOptional, name
        out = str(tmp_path / "proc.tif")
        res = processing.run("rsgen:generate", {"EXTENT": "453000,453128,6233600,6233728 [EPSG:32734]", "GSD": 4.0,
                                                "PROMPT": "houses", "MODEL": "rsgen-tiny", "SEED": 1, "OUTPUT": out,
                                                **given})
        want = {"steps": given.get("STEPS", OWN["steps"]), "guidance": given.get("GUIDANCE", OWN["guidance"]),
                "sampler": given.get("SAMPLER", OWN["sampler"])}
        assert recorded(res["OUTPUT"]) == want
    finally:
        registry.removeProvider(prov)
        QgsSettings().remove("rsgen_qgis")


def test_the_default_model_is_rsgen_base_1_shipped_in_models(tmp_path):
    """The model a request names when it names none is rsgen-base-1 (the 256 px latent 1.0 preview), a package in
    the repository's models/ (bundled in the plugin zip) whose text encoder rsgen-base and autoencoder taef2 are
    beside it; every door left to the default names it, with the package's own steps, guidance and sampler, and
    rsgen-base (the 64 px pixel model 0.5.0) stays installed to pick."""
    from rsgen_qgis.batch import spec
    from rsgen_qgis.cli import build_parser
    from rsgen_qgis.core.request import DEFAULT_MODEL, GenerationRequest
    from rsgen_qgis.core.runtime.models import find
    from rsgen_qgis.core.runtime.references import missing_references

    assert DEFAULT_MODEL == "rsgen-base-1"
    folder = os.path.join(ROOT, "models", DEFAULT_MODEL)
    assert os.path.isfile(os.path.join(folder, "manifest.json")), "the default model must ship in models/"
    pkg = find(DEFAULT_MODEL)  # no extra folders: the bundled ones
    assert os.path.realpath(pkg.path) == os.path.realpath(folder)
    assert pkg.id == DEFAULT_MODEL and pkg.kind == "latent" and pkg.manifest["tile"]["size"] == 256
    assert missing_references(pkg) == []  # the text encoder from rsgen-base, the autoencoder taef2: both there
    pixel = find("rsgen-base")
    assert os.path.realpath(pixel.path) == os.path.realpath(os.path.join(ROOT, "models", "rsgen-base"))
    assert pixel.kind == "pixel" and missing_references(pixel) == []

    assert GenerationRequest(extent=(0.0, 0.0, 64.0, 64.0), crs="EPSG:32734", output="", gsd=1.0).model == \
        "rsgen-base-1"
    for argv in (["demo"], ["generate", "--extent", "0,0,64,64", "--crs", "EPSG:32734", "--out", "x.tif"]):
        assert build_parser().parse_args(argv).model == "rsgen-base-1", argv
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "crs": "EPSG:32734", "gsd": 4.0,
                                   "aois": {"bboxes": [{"bbox": [453000.0, 6233600.0, 453150.0, 6233700.0]}]}}))
    assert spec.load(str(job)).model == "rsgen-base-1"

    d = pkg.manifest["defaults"]  # what a door left to the default runs with
    assert resolve(DEFAULT_MODEL) == {"steps": d["steps"], "guidance": d["guidance"], "sampler": d["sampler"]} == \
        {"steps": 10, "guidance": 5.0, "sampler": "dpmpp_2m_sde"}
    assert resolve("rsgen-base") == {"steps": 20, "guidance": 3.0, "sampler": "dpmpp_2m_sde"}  # its own, not these
