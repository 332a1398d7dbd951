"""Careless inputs get a clear error before the first model call, never a traceback, a silent default or an exit 0
with nothing done (issue 20, 8)."""
import os

import pytest
import yaml

from rsgen_qgis import cli
from rsgen_qgis.batch import runner, spec
from rsgen_qgis.batch.spec import JobSpecError
from rsgen_qgis.core.errors import ParameterError, RsgenError
from rsgen_qgis.core.request import GenerationRequest

EXTENT = "453000,6233600,454600,6235200"


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a door gets as far as loading a model."""
    from rsgen_qgis.core.engine import generate

    monkeypatch.setattr(generate, "load", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.mark.parametrize("args, message", [
    (["--gsd", "inf"], "GSD"),
    (["--gsd", "1e-9", "--large-area"], "pixels"),
    (["--gsd", "10", "--date", "yesterday"], "date"),
    (["--gsd", "10", "--date", "2020-13-01"], "date"),
    (["--gsd", "10", "--prompt", "caf\udce9 by the sea"], "prompt"),
    (["--gsd", "10", "--guidance", "inf"], "Guidance"),
    (["--width", "10", "--height", "10", "--extent", "0,0,inf,10"], "extent"),
])
def test_cli_refuses_before_the_model(tmp_path, capsys, no_model, args, message):
    argv = ["generate", "--extent", EXTENT, "--crs", "EPSG:32734", "--out", str(tmp_path / "x.tif"), "--quiet"]
    rc = cli.main(argv + args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and message.lower() in err.lower(), err
    assert os.listdir(tmp_path) == []


def test_request_values_are_finite_and_dates_real():
    base = dict(extent=(0, 0, 100, 100), crs="EPSG:32633", output="x.tif", gsd=10.0)
    for bad in (dict(gsd=float("inf")), dict(guidance=float("inf")), dict(date="yesterday"), dict(date="2021-02-30"),
                dict(date="20210201"), dict(prompt="\udcff"), dict(gsd=float("nan"))):
        with pytest.raises(ParameterError):
            GenerationRequest(**{**base, **bad})
    GenerationRequest(**{**base, "date": "2021-02-28", "prompt": "café"})


def job(tmp_path, **over):
    d = {"output": "out", "crs": "EPSG:32734", "gsd": 4.0, "model": "rsgen-tiny", "steps": 2, "tile_px": 48,
         "aois": {"bboxes": [{"bbox": [453130.0, 6233600.0, 453500.0, 6233850.0]}]}}
    d.update(over)
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


@pytest.mark.parametrize("change, message", [
    ({"steps": 0}, "steps: from 1 to 1000, got 0"),
    ({"tile_px": 0}, "tile_px: at least 16 pixels, got 0"),
    ({"block_windows": 0}, "block_windows: from 1 to 64, got 0"),
    ({"seed": -1}, "seed"),
    ({"gsd": float("nan")}, "gsd: must be a positive number"),
    ({"gsd": float("inf")}, "gsd: must be a positive number"),
    ({"guidance": float("inf")}, "guidance"),
    ({"date": "yesterday"}, "date: 'yesterday' is not a date"),
    ({"aois": {"bboxes": [{"bbox": [0, 0, float("inf"), 1]}]}}, r"aois.bboxes\[0\].bbox: expected four numbers.*all finite"),
])
def test_batch_spec_refuses_instead_of_defaulting(tmp_path, change, message):
    with pytest.raises(JobSpecError, match=message):
        spec.load(job(tmp_path, **change))


@pytest.mark.parametrize("content", ["text", "raster"])
def test_a_layout_file_that_is_not_vector(tmp_path, tiny_model_dir, capsys, content):
    bad = tmp_path / "roads.gpkg"
    if content == "text":
        bad.write_text("this is not a vector file\n")
    else:
        import numpy as np
        import rasterio

        with rasterio.open(bad.with_suffix(".tif"), "w", driver="GTiff", width=4, height=4, count=1,
                           dtype="uint8") as ds:
            ds.write(np.zeros((1, 4, 4), np.uint8))
        bad = bad.with_suffix(".tif")
    path = job(tmp_path, model_dirs=[tiny_model_dir], layout=[{"file": str(bad), "class": "road"}])
    with pytest.raises(RsgenError, match="not a vector file|cannot open"):
        runner.run(spec.load(path), workers=0, progress=False)
    assert cli.main(["batch", path, "--workers", "0", "--quiet"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_processing_refuses_an_unknown_target_crs(qgis_processing, tiny_model_dir, tmp_path, monkeypatch):
    import processing
    from qgis.core import QgsApplication, QgsProcessingException

    from rsgen_qgis import settings
    from rsgen_qgis.processing.provider import RsgenProvider

    monkeypatch.setenv(settings.ENV_MODEL_DIRS, tiny_model_dir)
    registry = QgsApplication.processingRegistry()
    p = RsgenProvider()
    assert registry.addProvider(p)
    try:
        with pytest.raises(QgsProcessingException, match="TARGET_CRS"):
            processing.run("rsgen:generate", {"EXTENT": "453000,454600,6233600,6235200 [EPSG:32734]",
                                              "TARGET_CRS": "EPSG:999999", "GSD": 50.0, "MODEL": "rsgen-tiny",
                                              "STEPS": 1, "OUTPUT": str(tmp_path / "x.tif")})
    finally:
        registry.removeProvider(p)
    assert not (tmp_path / "x.tif").exists()
