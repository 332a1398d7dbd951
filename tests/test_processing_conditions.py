"""The condition algorithms through processing.run with the tiny model: layout from layers, preview, inpainting,
super-resolution, variation and the dataset generator, on layers the tests build (memory layers, GeoPackages and
GeoTIFFs in several CRSs), and their refusals of bad input (clear message, no file left)."""
import json
import os

import numpy as np
import pytest
import rasterio
from osgeo import gdal, osr
from qgis.core import (QgsApplication, QgsCoordinateTransformContext,
                       QgsProcessingException, QgsProject, QgsRasterLayer, QgsSettings, QgsVectorFileWriter,
                       QgsVectorLayer)

from rsgen_qgis import settings
from rsgen_qgis.core.geo import projdata  # noqa: F401  (before pyproj)
from rsgen_qgis.core.conditions.encoding import LAYOUT_CLASSES
from rsgen_qgis.core.request import SR_STRENGTH_DEFAULT
from rsgen_qgis.processing.provider import RsgenProvider

import pyproj  # noqa: E402
from qgs_layers import memory_layer

UTM = "EPSG:32734"
X0, Y0, PX = 453000.0, 6234000.0, 10.0  # a 16 x 16 raster of 10 m pixels near Swellendam
N = 16
MODEL = {"MODEL": "rsgen-tiny", "SEED": 1, "STEPS": 2, "GUIDANCE": 1.0, "SAMPLER": "ddim", "PROMPT": "houses"}
BUILDING = LAYOUT_CLASSES.index("building")
ROAD = LAYOUT_CLASSES.index("road")


@pytest.fixture
def tiny(qgis_processing, tiny_model_dir, monkeypatch):
    monkeypatch.delenv(settings.ENV_MODEL_DIRS, raising=False)
    QgsSettings().remove("rsgen_qgis")
    registry = QgsApplication.processingRegistry()
    p = RsgenProvider()
    assert registry.addProvider(p)
    settings.set_model_dirs([tiny_model_dir])
    yield tiny_model_dir
    registry.removeProvider(p)
    QgsSettings().remove("rsgen_qgis")


def run(alg, params):
    import processing

    return processing.run(f"rsgen:{alg}", params)


def files(folder):
    return sorted(p for p in os.listdir(folder) if not p.startswith("."))


def to_crs(crs, pts, src=UTM):
    t = pyproj.Transformer.from_crs(src, crs, always_xy=True)
    return [t.transform(x, y) for x, y in pts]


def rect_pts(xmin, ymin, xmax, ymax):
    return [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)]


def poly_wkt(pts):
    return "POLYGON((" + ",".join(f"{x!r} {y!r}" for x, y in pts) + "))"


def pixel_rect(row, col, nrow=1, ncol=1, inset=0.2, x0=X0, y0=Y0, px=PX):
    return rect_pts(x0 + (col + inset) * px, y0 - (row + nrow - inset) * px, x0 + (col + ncol - inset) * px,
                    y0 - (row + inset) * px)


def gpkg(lyr, path):
    opts = QgsVectorFileWriter.SaveVectorOptions()
    opts.driverName = "GPKG"
    err = QgsVectorFileWriter.writeAsVectorFormatV3(lyr, str(path), QgsCoordinateTransformContext(), opts)
    assert err[0] == QgsVectorFileWriter.NoError, err
    out = QgsVectorLayer(str(path), lyr.name(), "ogr")
    assert out.isValid()
    return out


def geotiff(path, bands, srs, transform, dtype=gdal.GDT_Byte):
    """bands: (B, H, W) array. srs: anything OSR's SetFromUserInput reads."""
    b, h, w = bands.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, b, dtype)
    ds.SetGeoTransform(transform)
    sr = osr.SpatialReference()
    sr.SetFromUserInput(srs)
    ds.SetProjection(sr.ExportToWkt())
    for i in range(b):
        ds.GetRasterBand(i + 1).WriteArray(bands[i])
    ds = None
    return str(path)


@pytest.fixture
def rgb_raster(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, N, N), dtype=np.uint8)
    path = geotiff(tmp_path / "ortho.tif", img, UTM, (X0, PX, 0, Y0, 0, -PX))
    return QgsRasterLayer(path, "ortho"), img


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform.to_gdal(), ds.crs, (ds.width, ds.height)


# -- layout ---------------------------------------------------------------------------------------------------
def test_all_algorithms_registered(tiny):
    ids = {a.id() for a in QgsApplication.processingRegistry().providerById("rsgen").algorithms()}
    assert {"rsgen:generate", "rsgen:generatelayout", "rsgen:previewlayout", "rsgen:inpaint", "rsgen:superresolve",
            "rsgen:variation", "rsgen:dataset"} <= ids


def layout_layers(tmp_path):
    """Buildings (memory, UTM) + a road (GeoPackage, EPSG:4326) + a park (GeoPackage, EPSG:3857)."""
    houses = memory_layer("Polygon", UTM, [(poly_wkt(pixel_rect(3, 5)), {"building": "house"})], name="houses")
    y = Y0 - 10.5 * PX
    road_ll = to_crs("EPSG:4326", [(X0 - 50, y), (X0 + 250, y)])
    roads = gpkg(memory_layer("LineString", "EPSG:4326",
                              [("LINESTRING(" + ",".join(f"{x!r} {y!r}" for x, y in road_ll) + ")",
                                {"highway": "residential"})], (("highway", "string"),), "roads"),
                 tmp_path / "roads.gpkg")
    park = gpkg(memory_layer("Polygon", "EPSG:3857", [(poly_wkt(to_crs("EPSG:3857", pixel_rect(12, 12, 2, 3))),
                                                      {"leisure": "park"})], (("leisure", "string"),), "parks"),
                tmp_path / "parks.gpkg")
    return [houses, roads, park]


AREA = {"EXTENT": f"{X0},{X0 + N * PX},{Y0 - N * PX},{Y0} [{UTM}]", "GSD": PX}


def test_preview_layout_aligned_reprojected_and_styled(tiny, tmp_path, loading_iface):
    import processing

    out = str(tmp_path / "layout.tif")
    res = processing.runAndLoadResults("rsgen:previewlayout", dict(AREA, LAYERS=layout_layers(tmp_path), OUTPUT=out))
    ids, transform, crs, size = read(out)
    assert transform == pytest.approx((X0, PX, 0, Y0, 0, -PX)) and size == (N, N) and crs.to_epsg() == 32734
    ids = ids[0]
    assert ids[3, 5] == BUILDING and (ids == BUILDING).sum() == 1  # the pixel, exactly
    assert set(np.nonzero(ids[10] == ROAD)[0]) == set(range(N))  # 6 m road on row 10's centre line
    assert (ids == ROAD).sum() == N
    assert (ids[12:14, 12:15] == LAYOUT_CLASSES.index("vegetation")).all()
    assert "building 1" in res["LAYOUT_SUMMARY"] and "road 1" in res["LAYOUT_SUMMARY"]
    loaded = QgsProject.instance().mapLayersByName("Layout preview")
    assert loaded and loaded[0].renderer().type() == "paletted"
    assert [c.label for c in loaded[0].renderer().classes()] == list(LAYOUT_CLASSES)


def test_generate_from_layers_with_boxes(tiny, tmp_path):
    boxes = memory_layer("Point", "EPSG:4326", [(f"POINT({x!r} {y!r})", {"kind": "tank"})
                                                for x, y in to_crs("EPSG:4326", [(X0 + 85, Y0 - 85)])],
                         (("kind", "string"),), "tanks")
    out = str(tmp_path / "gen.tif")
    res = run("generatelayout", dict(AREA, **MODEL, LAYERS=layout_layers(tmp_path), BOXES=boxes, BOX_FIELD="kind",
                                     BOX_SIZE=20.0, OUTPUT=out))
    img, transform, crs, size = read(out)
    assert size == (N, N) and transform == pytest.approx((X0, PX, 0, Y0, 0, -PX)) and img.std() > 0
    assert "Boxes: 1 drawn" in res["LAYOUT_SUMMARY"]
    with rasterio.open(out) as ds:
        assert json.loads(ds.tags()["request"])["conditions"]["layout"] == f"{N}x{N}"


def test_layout_bad_input_messages_and_no_file(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    houses = memory_layer("Polygon", UTM, [(poly_wkt(pixel_rect(3, 5)), {"building": "house"})], name="houses")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"class": "building", "field": "bldg_type", "values": ["house"]}]))
    cases = [
        (dict(LAYERS=[houses], RULES=str(rules)), r"Layer 'houses' has no field 'bldg_type'"),
        (dict(LAYERS=[memory_layer("Polygon", UTM, [], name="nothing")]), r"All the chosen layers are empty \(nothing\)"),
        (dict(), "Choose vector layers"),
    ]
    for alg in ("generatelayout", "previewlayout"):
        for params, message in cases:
            with pytest.raises(QgsProcessingException, match=message):
                run(alg, dict(AREA, **(MODEL if alg == "generatelayout" else {}), **params,
                              OUTPUT=str(out / f"{alg}.tif")))
    assert files(out) == []


def test_invalid_geometries_repaired_and_counted(tiny, tmp_path):
    a, b = X0 + 2, X0 + 78
    bow = f"POLYGON(({a} {Y0 - 2},{b} {Y0 - 78},{b} {Y0 - 2},{a} {Y0 - 78},{a} {Y0 - 2}))"
    spike = f"POLYGON(({X0} {Y0},{X0 + 50} {Y0 - 50},{X0 + 100} {Y0 - 100},{X0} {Y0}))"
    lyr = memory_layer("Polygon", UTM, [(bow, {"building": "yes"}), (spike, {"building": "yes"})], name="bad")
    res = run("previewlayout", dict(AREA, LAYERS=[lyr], OUTPUT=str(tmp_path / "l.tif")))
    assert "invalid geometries: 1 repaired, 1 skipped" in res["LAYOUT_SUMMARY"]
    ids = read(res["OUTPUT"])[0][0]
    assert ids[3, 1] == BUILDING and ids[3, 6] == BUILDING and ids[1, 3] == 0


# -- raster conditions ----------------------------------------------------------------------------------------
def test_inpaint_outside_mask_identical_on_the_rasters_grid(tiny, tmp_path, rgb_raster):
    layer, img = rgb_raster
    mask = gpkg(memory_layer("Polygon", "EPSG:4326", [(poly_wkt(to_crs("EPSG:4326", pixel_rect(4, 4, 6, 5, 0.0))),
                                                       {"building": "a"})], name="mask"), tmp_path / "mask.gpkg")
    out = str(tmp_path / "inp.tif")
    res = run("inpaint", dict(MODEL, INPUT=layer, MASK=mask, OUTPUT=out))
    got, transform, crs, size = read(out)
    assert transform == pytest.approx((X0, PX, 0, Y0, 0, -PX)) and size == (N, N) and crs.to_epsg() == 32734
    inside = np.zeros((N, N), bool)
    inside[4:10, 4:9] = True
    assert res["MASK_PIXELS"] == inside.sum()
    assert np.array_equal(got[:, ~inside], img[:, ~inside])  # byte-identical outside the mask
    assert not np.array_equal(got[:, inside], img[:, inside])


def test_inpaint_mask_grown_by_metres(tiny, tmp_path, rgb_raster):
    layer, img = rgb_raster
    mask = memory_layer("Polygon", UTM, [(poly_wkt(pixel_rect(4, 4, 6, 5, 0.0)), {})], fields=(), name="m")
    out = str(tmp_path / "grown.tif")
    res = run("inpaint", dict(MODEL, INPUT=layer, MASK=mask, GROW_M=2 * PX, OUTPUT=out))
    grown = np.zeros((N, N), bool)  # rows 4-9, cols 4-8 grown by a 2 px disc: 2 more each side, corners rounded
    grown[2:12, 2:11] = True
    for r, c, dr, dc in ((2, 2, 1, 1), (2, 10, 1, -1), (11, 2, -1, 1), (11, 10, -1, -1)):
        grown[r, c] = grown[r + dr, c] = grown[r, c + dc] = False
    assert res["MASK_PIXELS"] == grown.sum() == 10 * 9 - 4 * 3
    got = read(out)[0]
    assert np.array_equal(got[:, ~grown], img[:, ~grown])
    assert run("inpaint", dict(MODEL, INPUT=layer, MASK=mask, OUTPUT=str(tmp_path / "bare.tif")))["MASK_PIXELS"] == 30


def test_inpaint_selected_features_only(tiny, tmp_path, rgb_raster):
    layer, _ = rgb_raster
    mask = memory_layer("Polygon", UTM, [(poly_wkt(pixel_rect(1, 1, 2, 2, 0.0)), {}),
                                         (poly_wkt(pixel_rect(10, 10, 3, 3, 0.0)), {})], fields=(), name="m")
    QgsProject.instance().addMapLayer(mask)
    try:
        mask.selectByIds([sorted(mask.allFeatureIds())[1]])  # the 3 x 3 px square
        res = run("inpaint", dict(MODEL, INPUT=layer, MASK=mask, SELECTED_ONLY=True, OUTPUT=str(tmp_path / "s.tif")))
        assert res["MASK_PIXELS"] == 9
        mask.removeSelection()
        with pytest.raises(QgsProcessingException, match="No feature of the mask layer 'm' is selected"):
            run("inpaint", dict(MODEL, INPUT=layer, MASK=mask, SELECTED_ONLY=True, OUTPUT=str(tmp_path / "t.tif")))
    finally:
        QgsProject.instance().removeMapLayer(mask.id())


def test_inpaint_mask_outside_the_raster(tiny, tmp_path, rgb_raster):
    layer, _ = rgb_raster
    far = memory_layer("Polygon", UTM, [(poly_wkt(rect_pts(X0 + 5000, Y0, X0 + 5100, Y0 + 100)), {})], fields=(),
                       name="elsewhere")
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(QgsProcessingException, match=r"mask layer 'elsewhere' do not overlap raster 'ortho'"):
        run("inpaint", dict(MODEL, INPUT=layer, MASK=far, OUTPUT=str(out / "x.tif")))
    with pytest.raises(QgsProcessingException, match=r"mask layer 'empty' is empty"):
        run("inpaint", dict(MODEL, INPUT=layer, MASK=memory_layer("Polygon", UTM, [], fields=(), name="empty"),
                            OUTPUT=str(out / "x.tif")))
    assert files(out) == []


def test_superresolve_same_footprint_four_times_finer(tiny, tmp_path, rgb_raster):
    layer, _ = rgb_raster
    res = run("superresolve", dict(MODEL, INPUT=layer, OUTPUT=str(tmp_path / "sr.tif")))
    img, transform, crs, size = read(res["OUTPUT"])
    assert size == (4 * N, 4 * N) and crs.to_epsg() == 32734
    assert transform == pytest.approx((X0, PX / 4, 0, Y0, 0, -PX / 4))
    with rasterio.open(res["OUTPUT"]) as ds, rasterio.open(layer.source()) as src:
        assert tuple(ds.bounds) == pytest.approx(tuple(src.bounds))  # footprint identity
        assert json.loads(ds.tags()["request"])["conditions"]["guide"] == f"3x{N}x{N}"
        assert json.loads(ds.tags()["request"])["guide_consistency"] == 1.0
        assert json.loads(ds.tags()["request"])["conditions"]["strength"] == SR_STRENGTH_DEFAULT  # from the raster
    assert res["GSD_METRES"] == pytest.approx(2.5, rel=0.01)
    # each 4 x 4 block averages to the raster's pixel (guide consistency, the default); 0: the model reads it only,
    # and from noise (strength 1) the untrained model's cells are far from it; a low strength starts near it
    cells = lambda a: a.astype(float).reshape(3, N, 4, N, 4).mean((2, 4))  # noqa: E731
    assert np.abs(cells(img) - rgb_raster[1]).mean() < 2.0
    errs = {}
    for s in (1.0, 0.2):
        r = run("superresolve", dict(MODEL, INPUT=layer, GUIDE_CONSISTENCY=0.0, STRENGTH=s, STEPS=10,
                                     OUTPUT=str(tmp_path / f"sr0_{s}.tif")))
        errs[s] = np.abs(cells(read(r["OUTPUT"])[0]) - rgb_raster[1]).mean()
    assert errs[1.0] > 20 and errs[0.2] < 0.5 * errs[1.0], errs


def test_16bit_single_band_raster_is_stretched_and_reported(tiny, tmp_path):
    """A 16-bit single-band raster in Web Mercator: SR and inpainting work on it, and say how it was converted."""
    t = pyproj.Transformer.from_crs(UTM, "EPSG:3857", always_xy=True)
    mx, my = t.transform(X0, Y0)
    band = (np.arange(N * N, dtype=np.uint16).reshape(1, N, N) * 200 + 1000)
    path = geotiff(tmp_path / "dem16.tif", band, "EPSG:3857", (mx, 12.0, 0, my, 0, -12.0), gdal.GDT_UInt16)
    layer = QgsRasterLayer(path, "dem16")
    res = run("superresolve", dict(MODEL, INPUT=layer, OUTPUT=str(tmp_path / "sr16.tif")))
    assert "single band" in res["NOTES"] and "UInt16" in res["NOTES"] and "stretched" in res["NOTES"]
    img, transform, crs, size = read(res["OUTPUT"])
    assert size == (4 * N, 4 * N) and crs.to_epsg() == 3857 and transform == pytest.approx((mx, 3.0, 0, my, 0, -3.0))
    mask = memory_layer("Polygon", "EPSG:3857", [(poly_wkt(rect_pts(mx + 24, my - 60, mx + 60, my - 24)), {})],
                        fields=(), name="m")
    res = run("inpaint", dict(MODEL, INPUT=layer, MASK=mask, OUTPUT=str(tmp_path / "inp16.tif")))
    out = read(res["OUTPUT"])[0]
    assert out.shape == (3, N, N) and res["MASK_PIXELS"] == 9
    inside = np.zeros((N, N), bool)
    inside[2:5, 2:5] = True
    assert (out[0, ~inside] == out[1, ~inside]).all() and (out[0, ~inside] == out[2, ~inside]).all()  # grey outside


def test_raster_in_a_crs_without_inverse(tiny, tmp_path):
    """Bacon globular has no inverse in PROJ: the model could not be told where the image is."""
    img = np.full((3, N, N), 100, np.uint8)
    path = geotiff(tmp_path / "bacon.tif", img, "+proj=bacon +datum=WGS84 +units=m +no_defs",
                   (2200000.0, 10.0, 0, -3700000.0, 0, -10.0))
    layer = QgsRasterLayer(path, "bacon")
    assert layer.isValid()
    out = tmp_path / "o"
    out.mkdir()
    for alg, extra in (("superresolve", {}), ("variation", {"STRENGTH": 0.5})):
        with pytest.raises(QgsProcessingException, match=r"Raster 'bacon' is in a CRS .* cannot be converted back"):
            run(alg, dict(MODEL, **extra, INPUT=layer, OUTPUT=str(out / "x.tif")))
    assert files(out) == []


def test_variation_on_the_rasters_grid(tiny, tmp_path, rgb_raster):
    layer, img = rgb_raster
    outs = []
    for s in (0.2, 1.0):
        res = run("variation", dict(MODEL, STEPS=10, INPUT=layer, STRENGTH=s, OUTPUT=str(tmp_path / f"v{s}.tif")))
        got, transform, _, size = read(res["OUTPUT"])
        assert size == (N, N) and transform == pytest.approx((X0, PX, 0, Y0, 0, -PX))
        outs.append(np.abs(got.astype(int) - img).mean())
        with rasterio.open(res["OUTPUT"]) as ds:
            assert json.loads(ds.tags()["request"])["conditions"]["strength"] == s
    assert outs[0] < outs[1]  # a low strength stays closer to the source


# -- dataset ----------------------------------------------------------------------------------------------------
def seg_net(path, always: str):
    """A 1x1-conv ONNX 'segmentation net' that predicts one class everywhere (the filter's two extremes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = len(LAYOUT_CLASSES)
    bias = np.zeros(k, np.float32)
    bias[LAYOUT_CLASSES.index(always)] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["scores"])], "seg",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, "H", "W"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", k, "H", "W"])],
        [numpy_helper.from_array(np.zeros((k, 3, 1, 1), np.float32), "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


GSD2 = 4.0


@pytest.fixture
def objects(tmp_path):
    """Rotated building polygons (GeoPackage, EPSG:4326) spread over a 400 m square in UTM."""
    rng = np.random.default_rng(3)
    feats = []
    for i in range(40):
        cx, cy = X0 + rng.uniform(20, 380), Y0 - rng.uniform(20, 380)
        a = np.radians(rng.uniform(0, 90))
        u, v = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
        pts = [tuple(np.array([cx, cy]) + s * 8 * u + t * 5 * v) for s, t in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        feats.append((poly_wkt(to_crs("EPSG:4326", pts + pts[:1])), {"kind": "house" if i % 3 else "shed"}))
    return gpkg(memory_layer("Polygon", "EPSG:4326", feats, (("kind", "string"),), "objects"), tmp_path / "obj.gpkg")


DATASET = dict(MODEL, AOI=f"{X0},{X0 + 400},{Y0 - 400},{Y0} [{UTM}]", COUNT=3, GSD=GSD2, SIZE=32, BOX_FIELD="kind")


def check_coco(path, n_images):
    from pycocotools.coco import COCO

    coco = COCO(path)  # the reference reader accepts it
    assert len(coco.getImgIds()) == n_images
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} <= {"house", "shed"}
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs(ann["image_id"])[0]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6 and w > 0 < h
        assert coco.annToMask(ann).shape == (img["height"], img["width"])
    return coco


def check_dota(path, size):
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[0] == "imagesource:rsgen" and lines[1].startswith("gsd:")
    assert float(lines[1][4:]) == pytest.approx(GSD2, rel=0.01)
    for line in lines[2:]:
        parts = line.split(" ")
        assert len(parts) == 10 and parts[8] in ("house", "shed") and parts[9] == "0"
        xy = np.array(parts[:8], float).reshape(4, 2)
        assert (xy > -20).all() and (xy < size + 20).all()
        shoelace = sum(xy[i, 0] * xy[(i + 1) % 4, 1] - xy[(i + 1) % 4, 0] * xy[i, 1] for i in range(4))
        assert shoelace > 0  # clockwise on screen (rows grow downwards)
        sides = np.hypot(*(np.roll(xy, -1, 0) - xy).T)
        assert sorted(sides) == pytest.approx([2.5, 2.5, 4.0, 4.0], abs=0.15)  # 10 x 16 m at 4 m/px; 0.1 px corners
    return len(lines) - 2


def test_dataset_random_extents_coco_dota_geojson(tiny, tmp_path, objects):
    folder = tmp_path / "ds"
    res = run("dataset", dict(DATASET, BOXES=objects, OUTPUT_FOLDER=str(folder)))
    assert res["GENERATED"] == 3 and res["KEPT"] == 3 and res["FILTER_STATUS"] == "off"
    assert files(folder) == ["boxes.geojson", "coco.json", "dota", "images", "summary.json"]
    images = files(folder / "images")
    assert images == ["sample_0001.tif", "sample_0002.tif", "sample_0003.tif"]
    coco = check_coco(res["COCO"], 3)
    n_dota = 0
    for name in images:
        with rasterio.open(folder / "images" / name) as ds:
            assert (ds.width, ds.height) == (32, 32) and ds.crs.to_epsg() == 32734 and ds.res == (GSD2, GSD2)
            x0, y0 = ds.transform.c, ds.transform.f
            assert X0 <= x0 and x0 + 128 <= X0 + 400 and Y0 - 400 <= y0 - 128 and y0 <= Y0
            assert x0 % GSD2 == 0 and y0 % GSD2 == 0  # snapped to whole pixels
        n_dota += check_dota(folder / "dota" / name.replace(".tif", ".txt"), 32)
    assert n_dota >= 3 and n_dota == len(coco.getAnnIds()) - 0  # same objects in both
    gj = QgsVectorLayer(res["GEOJSON"], "boxes", "ogr")
    assert gj.isValid() and gj.crs().authid() == UTM and gj.featureCount() == n_dota
    f = next(gj.getFeatures())
    assert f["image"].startswith("images/sample_") and f.geometry().area() == pytest.approx(160.0, rel=0.01)


def test_dataset_listed_extents_and_filter(tiny, tmp_path, objects):
    ext = memory_layer("Polygon", UTM, [(poly_wkt(rect_pts(X0, Y0 - 200, X0 + 200, Y0)), {}),
                                        (poly_wkt(rect_pts(X0 + 200, Y0 - 400, X0 + 400, Y0 - 200)), {})],
                       fields=(), name="tiles")
    base = dict(DATASET, BOXES=objects, EXTENTS=ext, GSD=10.0)
    del base["AOI"]
    # no segmentation net in the package: the filter says so and keeps everything
    res = run("dataset", dict(base, FILTER=True, OUTPUT_FOLDER=str(tmp_path / "a")))
    assert res["KEPT"] == 2 and res["FILTER_STATUS"].startswith("unavailable: model package 'rsgen-tiny' has no "
                                                                 "segmentation net")
    with rasterio.open(tmp_path / "a" / "images" / "sample_0002.tif") as ds:
        assert tuple(ds.bounds) == pytest.approx((X0 + 200, Y0 - 400, X0 + 400, Y0 - 200))
    # a net that confirms every building keeps all; one that sees only background drops all, leaving no image
    yes = seg_net(tmp_path / "yes.onnx", "building")
    res = run("dataset", dict(base, FILTER=True, SEGNET=yes, OUTPUT_FOLDER=str(tmp_path / "b")))
    assert res["KEPT"] == 2 and res["FILTER_STATUS"] == "kept 2 of 2 (segmentation net yes.onnx)"
    no = seg_net(tmp_path / "no.onnx", "background")
    with pytest.raises(QgsProcessingException, match=r"the filter dropped all 2 \(share of boxes confirmed per sample: 0.00, 0.00"):
        run("dataset", dict(base, FILTER=True, SEGNET=no, OUTPUT_FOLDER=str(tmp_path / "c")))
    assert files(tmp_path / "c" / "images") == [] and not os.path.exists(tmp_path / "c" / "coco.json")


def test_dataset_bad_input(tiny, tmp_path, objects):
    with pytest.raises(QgsProcessingException, match="smaller than one image"):
        run("dataset", dict(DATASET, BOXES=objects, SIZE=256, OUTPUT_FOLDER=str(tmp_path / "a")))
    empty = memory_layer("Polygon", UTM, [], (("kind", "string"),), "none")
    with pytest.raises(QgsProcessingException, match="boxes layer 'none' is empty"):
        run("dataset", dict(DATASET, BOXES=empty, OUTPUT_FOLDER=str(tmp_path / "b")))
    far = dict(DATASET, AOI=f"{X0 + 9000},{X0 + 9400},{Y0 - 400},{Y0} [{UTM}]")
    with pytest.raises(QgsProcessingException, match="No random extent .* held 1 boxes"):
        run("dataset", dict(far, BOXES=objects, OUTPUT_FOLDER=str(tmp_path / "c")))
