"""Vector layers -> layout raster: pixel alignment, rules, reprojection, repairs and the messages users see."""
import json

import numpy as np

from rsgen_qgis.core.geo import projdata  # noqa: F401  (before pyproj: PROJ data in a venv)
import pyproj  # noqa: E402
import pytest
from osgeo import gdal
from qgis.core import (QgsCoordinateTransformContext, QgsRasterLayer, QgsVectorFileWriter,
                       QgsVectorLayer)

from rsgen_qgis.core.conditions.encoding import LAYOUT_CLASSES, NO_LAYOUT
from rsgen_qgis.core.errors import ConditionError, ParameterError
from rsgen_qgis.core.geo.georef import Grid
from rsgen_qgis.core.conditions.rules import DEFAULT_OSM_RULES, Rule, load_rules
from rsgen_qgis.gis.rasterize import layers_to_layout, stats_message, style_layout_layer, write_layout
from qgs_layers import memory_layer

ROAD, MAJOR, BUILDING, VEG, WATER = (LAYOUT_CLASSES.index(c) for c in
                                     ("road", "major_road", "building", "vegetation", "water"))
UTM = "EPSG:32634"
X0, Y0, PX = 500000.0, 4000000.0, 10.0  # a 20 x 16 grid of 10 m pixels in UTM 34N
GRID = Grid(pyproj.CRS(UTM).to_wkt(), (X0, PX, 0.0, Y0, 0.0, -PX), 20, 16)


def layer(geom: str, crs: str, features, fields=("building",), name="test"):
    """Memory layer: features = [(wkt, {field: value})]."""
    return memory_layer(geom, crs, features, tuple((f, "string") for f in fields), name)


def to_gpkg(lyr, path, name):
    opts = QgsVectorFileWriter.SaveVectorOptions()
    opts.driverName = "GPKG"
    err = QgsVectorFileWriter.writeAsVectorFormatV3(lyr, str(path), QgsCoordinateTransformContext(), opts)
    assert err[0] == QgsVectorFileWriter.NoError, err
    out = QgsVectorLayer(str(path), name, "ogr")
    assert out.isValid()
    return out


def pixel_box(row, col, inset=0.0, grid=GRID):
    """(xmin, ymin, xmax, ymax) of a pixel in grid units, shrunk by `inset` pixels on each side."""
    x0, px, _, y0, _, npy = grid.transform
    return (x0 + (col + inset) * px, y0 + (row + 1 - inset) * npy, x0 + (col + 1 - inset) * px, y0 + (row + inset) * npy)


def rect_wkt(xmin, ymin, xmax, ymax):
    return f"POLYGON(({xmin} {ymin},{xmax} {ymin},{xmax} {ymax},{xmin} {ymax},{xmin} {ymin}))"


BUILDINGS = [Rule("building", "building", ("*",), "polygon", priority=50)]


def test_polygon_exactly_covering_one_pixel_burns_exactly_that_pixel(qgis_app):
    lyr = layer("Polygon", UTM, [(rect_wkt(*pixel_box(3, 5)), {"building": "yes"})])
    ids, stats = layers_to_layout([lyr], BUILDINGS, GRID)
    assert ids.shape == (16, 20) and ids.dtype == np.uint8
    assert list(zip(*np.nonzero(ids))) == [(3, 5)]
    assert ids[3, 5] == BUILDING and stats["features"]["building"] == 1 and stats["matched"] == 1


def test_line_along_a_row(qgis_app):
    y = Y0 - 7.5 * PX  # centre line of row 7
    lines = [(f"LINESTRING({X0 + 0.5 * PX} {y}, {X0 + 19.5 * PX} {y})", {"highway": "residential"})]
    thin = [Rule("road", "highway", ("*",), "line", 0.0, 30)]
    ids, _ = layers_to_layout([layer("LineString", UTM, lines, ("highway",))], thin, GRID)
    assert set(zip(*np.nonzero(ids))) == {(7, c) for c in range(20)}
    wide = [Rule("road", "highway", ("*",), "line", 3 * PX, 30)]  # 30 m wide: rows 6, 7 and 8
    ids, _ = layers_to_layout([layer("LineString", UTM, lines, ("highway",))], wide, GRID)
    assert sorted(set(np.nonzero(ids)[0])) == [6, 7, 8]
    assert (ids[6:9] == ROAD).all()


def test_default_osm_rules_priorities_and_widths(qgis_app):
    polys = layer("Polygon", UTM, [(rect_wkt(X0, Y0 - 160, X0 + 200, Y0), {"landuse": "forest", "building": None}),
                                   (rect_wkt(*pixel_box(2, 2)), {"building": "house", "landuse": None}),
                                   (rect_wkt(*pixel_box(2, 4)), {"building": "no", "landuse": None})],
                  fields=("landuse", "building"), name="areas")
    y = Y0 - 10.5 * PX + 1.0  # 1 m north of row 10's centre: pixel centres are never on the buffer's edge
    roads = layer("MultiLineString", UTM, [(f"MULTILINESTRING(({X0} {y}, {X0 + 200} {y}))", {"highway": "motorway"}),
                                           (f"LINESTRING({X0} {Y0 - 150}, {X0 + 200} {Y0 - 150})", {"highway": "path"})],
                  fields=("highway",), name="roads")
    ids, stats = layers_to_layout([polys, roads], DEFAULT_OSM_RULES, GRID)
    assert ids[2, 2] == BUILDING and ids[2, 4] == VEG and ids[0, 0] == VEG
    rows = sorted(set(np.nonzero(ids == MAJOR)[0]))
    assert rows == [9, 10]  # motorway 20 m wide: row 9's centre is 9 m away, row 11's 11 m
    assert stats["unmatched"] == 2  # building=no and highway=path
    assert "major_road 1" in stats_message(stats)


def test_reprojection_4326_and_3857_geopackages_onto_utm_grid(qgis_app, tmp_path):
    xy = {}
    for crs, (row, col) in (("EPSG:4326", (4, 6)), ("EPSG:3857", (12, 15))):
        t = pyproj.Transformer.from_crs(UTM, crs, always_xy=True)
        xmin, ymin, xmax, ymax = pixel_box(row, col, inset=0.2)
        ring = [t.transform(x, y) for x, y in ((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin))]
        wkt = "POLYGON((" + ",".join(f"{x!r} {y!r}" for x, y in ring) + "))"
        mem = layer("Polygon", crs, [(wkt, {"building": "yes"})])
        xy[crs] = to_gpkg(mem, tmp_path / f"b{crs[5:]}.gpkg", f"b{crs[5:]}")
    ids, stats = layers_to_layout(list(xy.values()), BUILDINGS, GRID)
    assert set(zip(*np.nonzero(ids))) == {(4, 6), (12, 15)}
    assert stats["layers"]["b4326"]["features"] == 1 and stats["layers"]["b3857"]["features"] == 1


def test_geographic_grid_buffers_in_metres(qgis_app):
    px = 1e-4  # about 11 m by 8.5 m at 40 N
    grid = Grid(pyproj.CRS("EPSG:4326").to_wkt(), (20.0, px, 0.0, 40.0, 0.0, -px), 40, 40)
    lyr = layer("LineString", "EPSG:4326", [("LINESTRING(20.002 39.9999, 20.002 39.9961)", {"highway": "x"})],
                ("highway",))
    ids, _ = layers_to_layout([lyr], [Rule("road", "highway", ("*",), "line", 60.0, 30)], grid)
    cols = np.nonzero(ids[20])[0]
    metres_per_col = pyproj.Geod(ellps="WGS84").inv(20.0, 39.998, 20.0 + px, 39.998)[2]
    assert abs(len(cols) - 60.0 / metres_per_col) <= 1.0  # 60 m wide, not 60 degrees nor 60 pixels


def test_multigeometries_and_features_partly_outside(qgis_app):
    half_out = rect_wkt(X0 - 500, Y0 - 20, X0 + 20, Y0 + 500)  # covers rows 0-1, cols 0-1 of the grid
    multi = f"MULTIPOLYGON((({X0 + 100} {Y0 - 100},{X0 + 110} {Y0 - 100},{X0 + 110} {Y0 - 90},{X0 + 100} {Y0 - 90},{X0 + 100} {Y0 - 100})),"\
            f"(({X0 + 150} {Y0 - 100},{X0 + 160} {Y0 - 100},{X0 + 160} {Y0 - 90},{X0 + 150} {Y0 - 90},{X0 + 150} {Y0 - 100})))"
    far = rect_wkt(X0 + 5000, Y0, X0 + 5100, Y0 + 100)
    lyr = layer("MultiPolygon", UTM, [(half_out, {"building": "a"}), (multi, {"building": "b"}),
                                      (far, {"building": "c"})])
    ids, stats = layers_to_layout([lyr], BUILDINGS, GRID)
    assert set(zip(*np.nonzero(ids))) == {(0, 0), (0, 1), (1, 0), (1, 1), (9, 10), (9, 15)}
    assert stats["outside"] == 1 and stats["matched"] == 2


def test_bow_tie_polygon_is_repaired_and_counted(qgis_app):
    a, b = pixel_box(0, 0)[:2], (X0 + 80, Y0 - 80)
    bow = f"POLYGON(({a[0]} {Y0},{b[0]} {b[1]},{b[0]} {Y0},{a[0]} {b[1]},{a[0]} {Y0}))"
    line_like = f"POLYGON(({X0} {Y0},{X0 + 50} {Y0 - 50},{X0 + 100} {Y0 - 100},{X0} {Y0}))"
    lyr = layer("Polygon", UTM, [(bow, {"building": "yes"}), (line_like, {"building": "yes"})])
    ids, stats = layers_to_layout([lyr], BUILDINGS, GRID)
    assert stats["repaired"] == 1 and stats["skipped_invalid"] == 1
    assert ids[3, 1] == BUILDING and ids[3, 6] == BUILDING and ids[1, 3] == 0  # the bow-tie's left and right halves
    assert "1 repaired, 1 skipped" in stats_message(stats)


def test_rules_file_naming_a_missing_field(qgis_app, tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"class": "building", "field": "bldg_type", "values": ["house"]}]))
    lyr = layer("Polygon", UTM, [(rect_wkt(*pixel_box(3, 5)), {"building": "house"})], name="houses")
    with pytest.raises(ConditionError, match=r"Layer 'houses' has no field 'bldg_type'.*rule 1.*building"):
        layers_to_layout([lyr], load_rules(str(path)), GRID)
    path.write_text(json.dumps([{"class": "building", "field": "building", "buffer": 3}]))
    with pytest.raises(ParameterError, match=r"rule 1: unknown key 'buffer'"):
        load_rules(str(path))


def test_default_rules_on_a_layer_without_osm_fields(qgis_app):
    lyr = layer("Polygon", UTM, [(rect_wkt(*pixel_box(3, 5)), {"kind": "house"})], ("kind",), name="plain")
    with pytest.raises(ConditionError, match=r"Layer 'plain' has none of the fields.*building.*kind"):
        layers_to_layout([lyr], DEFAULT_OSM_RULES, GRID)
    scoped = [Rule("building", None, geometry="polygon", priority=50, layer="plain")]  # field-agnostic rule
    ids, _ = layers_to_layout([lyr], scoped, GRID)
    assert ids[3, 5] == BUILDING


def test_empty_layers(qgis_app):
    empty = layer("Polygon", UTM, [], name="nothing")
    with pytest.raises(ConditionError, match=r"All the chosen layers are empty \(nothing\)"):
        layers_to_layout([empty], BUILDINGS, GRID)
    full = layer("Polygon", UTM, [(rect_wkt(*pixel_box(3, 5)), {"building": "yes"})])
    ids, stats = layers_to_layout([empty, full], BUILDINGS, GRID)
    assert stats["empty_layers"] == ["nothing"] and ids[3, 5] == BUILDING
    assert "empty layers: nothing" in stats_message(stats)
    with pytest.raises(ConditionError, match="at least one vector layer"):
        layers_to_layout([], BUILDINGS, GRID)


def test_points_buffered_and_no_match_warning(qgis_app):
    pts = layer("Point", UTM, [(f"POINT({X0 + 105} {Y0 - 105})", {"natural": "tree"})], ("natural",))
    ids, _ = layers_to_layout([pts], [Rule("vegetation", "natural", ("tree",), "point", 25.0, 10)], GRID)
    # a 25 m disc on pixel (10, 10)'s centre: its 4 neighbours' centres are 10 m away, the diagonals 14 m
    assert set(zip(*np.nonzero(ids))) == {(10, 10), (9, 10), (11, 10), (10, 9), (10, 11)}
    ids, stats = layers_to_layout([pts], [Rule("water", "natural", ("water",), "any", 0.0, 20)], GRID)
    assert not ids.any() and "all background" in stats["warnings"][0]


def test_write_layout_is_paletted_with_class_names(qgis_app, tmp_path):
    ids = np.zeros((16, 20), np.uint8)
    ids[3, 5], ids[0, 0] = BUILDING, NO_LAYOUT
    path = write_layout(str(tmp_path / "layout.tif"), ids, GRID)
    ds = gdal.Open(path)
    band = ds.GetRasterBand(1)
    assert ds.GetGeoTransform() == GRID.transform and band.GetNoDataValue() == NO_LAYOUT
    assert band.GetColorTable().GetColorEntry(BUILDING)[:3] == (190, 60, 50)
    assert ds.GetMetadataItem("layout_classes") == ",".join(LAYOUT_CLASSES)
    assert (band.ReadAsArray() == ids).all()
    rl = QgsRasterLayer(path, "layout")
    style_layout_layer(rl)
    assert rl.renderer().type() == "paletted"
    assert [c.label for c in rl.renderer().classes()] == list(LAYOUT_CLASSES)
    assert [p.name for p in tmp_path.iterdir()] == ["layout.tif"]  # no temporary file left behind
