"""Raster inputs with nodata (issue 20, 9): nodata stays nodata in the output (a GDAL mask: transparent in QGIS),
and a raster without a single valid pixel is refused with the reason, never turned into a black image."""
import numpy as np
import pytest
import rasterio
from osgeo import gdal
from qgis.core import QgsProcessingException, QgsRasterLayer

from rsgen_qgis.core.errors import ConditionError
from rsgen_qgis.core.request import Conditions, GenerationRequest
from test_processing_conditions import MODEL, PX, UTM, X0, Y0, N, geotiff, pixel_rect, poly_wkt, run, tiny  # noqa: F401
from qgs_layers import memory_layer

HOLE = (slice(0, 5), slice(10, 16))  # the raster's nodata corner, away from the inpainting mask


def float_raster(tmp_path, fill_nan=HOLE, value=None, nodata=float("nan")):
    rng = np.random.default_rng(1)
    a = rng.uniform(100.0, 900.0, (3, N, N)).astype(np.float32)
    if value is not None:
        a[:] = value
    elif fill_nan is not None:
        a[(slice(None),) + fill_nan] = np.nan
    path = geotiff(tmp_path / "float.tif", a, UTM, (X0, PX, 0, Y0, 0, -PX), gdal.GDT_Float32)
    if nodata is not None:
        ds = gdal.Open(path, gdal.GA_Update)
        for b in range(1, 4):
            ds.GetRasterBand(b).SetNoDataValue(nodata)
        ds = None
    return QgsRasterLayer(path, "float")


def mask_layer():
    return memory_layer("Polygon", UTM, [(poly_wkt(pixel_rect(8, 2, 5, 5, 0.0)), {})], fields=(), name="m")


def valid_of(path):
    with rasterio.open(path) as ds:
        return ds.read_masks(1) > 0, ds.read()


def test_inpainting_keeps_nan_nodata_as_nodata(tiny, tmp_path):
    out = str(tmp_path / "inp.tif")
    run("inpaint", dict(MODEL, INPUT=float_raster(tmp_path), MASK=mask_layer(), OUTPUT=out))
    valid, px = valid_of(out)
    hole = np.zeros((N, N), bool)
    hole[HOLE] = True
    assert not valid[hole].any() and valid[~hole].all()  # nodata where the source had none, data elsewhere
    assert px[:, ~hole].std() > 0


def test_variation_and_superresolution_keep_nodata(tiny, tmp_path):
    hole = np.zeros((N, N), bool)
    hole[HOLE] = True
    valid, _ = valid_of(run("variation", dict(MODEL, INPUT=float_raster(tmp_path), STRENGTH=0.5,
                                             OUTPUT=str(tmp_path / "var.tif")))["OUTPUT"])
    assert not valid[hole].any() and valid[~hole].all()
    valid, _ = valid_of(run("superresolve", dict(MODEL, INPUT=float_raster(tmp_path),
                                                OUTPUT=str(tmp_path / "sr.tif")))["OUTPUT"])
    assert np.array_equal(valid, ~np.repeat(np.repeat(hole, 4, 0), 4, 1))


@pytest.mark.parametrize("kind", ["all NaN", "all +inf"])
@pytest.mark.parametrize("alg", ["inpaint", "superresolve", "variation"])
def test_a_raster_without_valid_pixels_is_refused(tiny, tmp_path, kind, alg):
    layer = float_raster(tmp_path, value=np.nan if kind == "all NaN" else np.inf,
                         nodata=float("nan") if kind == "all NaN" else None)
    extra = {"MASK": mask_layer()} if alg == "inpaint" else {}
    with pytest.raises(QgsProcessingException, match="no valid pixel"):
        run(alg, dict(MODEL, INPUT=layer, OUTPUT=str(tmp_path / "x.tif"), **extra))
    assert not (tmp_path / "x.tif").exists()


def test_the_engine_writes_nodata_as_a_mask(tiny_model_dir, tmp_path):
    from rsgen_qgis.core.engine.generate import generate

    nodata = np.zeros((32, 32), bool)
    nodata[:4, :] = True
    base = dict(extent=(500000.0, 4000000.0, 500320.0, 4000320.0), crs="EPSG:32633", gsd=10.0, steps=1, seed=2,
                model="rsgen-tiny")
    for large in (False, True):
        r = generate(GenerationRequest(output=str(tmp_path / f"n{large}.tif"), large_area=large,
                                       conditions=Conditions(nodata=nodata), **base), model_dirs=[tiny_model_dir])
        assert np.array_equal(valid_of(r.path)[0], ~nodata)
    with pytest.raises(ConditionError, match="no valid pixel"):
        generate(GenerationRequest(output=str(tmp_path / "all.tif"), conditions=Conditions(
            nodata=np.ones((32, 32), bool)), **base), model_dirs=[tiny_model_dir])
    with pytest.raises(ConditionError, match="grid"):
        generate(GenerationRequest(output=str(tmp_path / "shape.tif"), conditions=Conditions(
            nodata=np.ones((8, 8), bool)), **base), model_dirs=[tiny_model_dir])
