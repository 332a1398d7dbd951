"""Object boxes: polygons and sized points -> rotated boxes, map units -> pixels, layout burning, exporters."""
import json
import math

import numpy as np
import pytest
from qgis.core import QgsVectorLayer

from rsgen_qgis.core.geo import projdata  # noqa: F401  (before pyproj)
from rsgen_qgis.core.conditions.encoding import LAYOUT_CLASSES, NO_LAYOUT
from rsgen_qgis.core.errors import ConditionError
from rsgen_qgis.core.geo.georef import Grid
from rsgen_qgis.gis.boxes import (Box, boxes_from_layer, burn_boxes, coco_dataset, dota_text, geojson, write_json)

import pyproj  # noqa: E402
from qgs_layers import memory_layer

UTM = "EPSG:32634"
X0, Y0, PX = 500000.0, 4000000.0, 2.0  # 64 x 48 pixels of 2 m
GRID = Grid(pyproj.CRS(UTM).to_wkt(), (X0, PX, 0.0, Y0, 0.0, -PX), 64, 48)
BUILDING = LAYOUT_CLASSES.index("building")


def layer(geom, crs, features, fields=(("kind", "string"),)):
    return memory_layer(geom, crs, features, fields, "boxes")


def rotated_rect(cx, cy, length, width, angle_deg):
    """Corners of a rectangle with its long side at angle_deg from +x (counter-clockwise)."""
    t = math.radians(angle_deg)
    u, v = (math.cos(t), math.sin(t)), (-math.sin(t), math.cos(t))
    return [(cx + a * length / 2 * u[0] + b * width / 2 * v[0], cy + a * length / 2 * u[1] + b * width / 2 * v[1])
            for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]


def wkt_of(corners):
    return "POLYGON((" + ",".join(f"{x!r} {y!r}" for x, y in list(corners) + [corners[0]]) + "))"


def test_polygon_gives_its_minimum_rotated_rectangle_in_map_units_and_pixels(qgis_app):
    cx, cy = X0 + 40.0, Y0 - 30.0  # pixel (col 20, row 15)
    rect = rotated_rect(cx, cy, 30.0, 12.0, 30.0)
    house = rect[:2] + [((rect[1][0] + rect[2][0]) / 2 - 1, (rect[1][1] + rect[2][1]) / 2)] + rect[2:]  # a notch
    lyr = layer("Polygon", UTM, [(wkt_of(house), {"kind": "house"})])
    (box,), counts = boxes_from_layer(lyr, "kind", GRID)
    assert box.category == "house" and counts["boxes"] == 1
    bx, by, w, h, a = box.rotated()
    assert (bx, by) == pytest.approx((cx, cy), abs=1e-6)
    assert sorted([w, h]) == pytest.approx([12.0, 30.0], abs=1e-6)
    assert a % 90 == pytest.approx(30.0 % 90, abs=1e-6)
    assert sorted(map(tuple, np.round(box.corners, 6))) == sorted(map(tuple, np.round(rect, 6)))
    px = box.to_pixels(GRID)
    pcx, pcy, pw, ph, pa = px.rotated()
    assert (pcx, pcy) == pytest.approx((20.0, 15.0)) and sorted([pw, ph]) == pytest.approx([6.0, 15.0])
    assert pa % 90 == pytest.approx(-30.0 % 90)  # rows grow downwards: the angle flips sign
    xmin, ymin, xmax, ymax = px.hbb()
    assert xmin == pytest.approx(min((x - X0) / PX for x, _ in rect))
    assert ymin == pytest.approx(min((Y0 - y) / PX for _, y in rect))


def test_polygons_in_4326_land_on_the_utm_pixels(qgis_app):
    to_ll = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    rect = [(X0 + 20, Y0 - 20), (X0 + 40, Y0 - 20), (X0 + 40, Y0 - 30), (X0 + 20, Y0 - 30)]
    lyr = layer("MultiPolygon", "EPSG:4326", [(wkt_of([to_ll.transform(*p) for p in rect]), {"kind": "barn"})])
    (box,), _ = boxes_from_layer(lyr, "kind", GRID)
    assert box.to_pixels(GRID).hbb() == pytest.approx((10.0, 10.0, 20.0, 15.0), abs=0.01)


def test_points_with_size_attributes(qgis_app):
    fields = (("cls", "string"), ("width_m", "double"), ("length_m", "double"), ("angle", "double"))
    pts = layer("Point", UTM, [(f"POINT({X0 + 40} {Y0 - 40})", {"cls": "tank", "width_m": 4, "length_m": 10,
                                                                  "angle": 90}),
                               (f"POINT({X0 + 80} {Y0 - 40})", {"cls": "car", "width_m": None, "length_m": 5}),
                               (f"POINT({X0 + 90} {Y0 - 40})", {"cls": None, "width_m": 2, "length_m": 5})],
                 fields)
    boxes, counts = boxes_from_layer(pts, "cls", GRID)
    assert counts["no_size"] == 1 and counts["no_category"] == 1 and len(boxes) == 1
    # azimuth 90: long axis E-W; sizes are ground metres (UTM's 0.9996 scale at the central meridian: 10.004 units)
    assert boxes[0].to_pixels(GRID).hbb() == pytest.approx((17.5, 19.0, 22.5, 21.0), abs=0.002)
    boxes, _ = boxes_from_layer(pts, "cls", GRID, default_size_m=3.0)
    assert len(boxes) == 2 and boxes[1].rotated()[2:4] == pytest.approx((5.0, 3.0), rel=1e-3)
    bare = layer("Point", UTM, [(f"POINT({X0 + 40} {Y0 - 40})", {"kind": "car"})])
    with pytest.raises(ConditionError, match="needs fields width_m and length_m"):
        boxes_from_layer(bare, "kind", GRID)
    with pytest.raises(ConditionError, match=r"has no field 'category'.*kind"):
        boxes_from_layer(bare, "category", GRID)


def test_burned_boxes_are_filled_rotated_rectangles(qgis_app):
    rect = rotated_rect(X0 + 60.3, Y0 - 41.1, 40.0, 14.0, 25.0)
    lyr = layer("Polygon", UTM, [(wkt_of(rect), {"kind": "house"}), (wkt_of(rotated_rect(X0 + 20, Y0 - 70, 8, 8, 0)),
                                                                     {"kind": "pool"})])
    boxes, _ = boxes_from_layer(lyr, "kind", GRID)
    base = np.full((48, 64), NO_LAYOUT, np.uint8)
    out = burn_boxes(base, boxes, GRID, {"pool": "water"})
    # expected: pixel centres inside the rotated rectangle (half-plane tests)
    cols, rows = np.meshgrid(np.arange(64) + 0.5, np.arange(48) + 0.5)
    x, y = X0 + cols * PX, Y0 - rows * PX
    c = np.asarray(rect)
    inside = np.ones_like(x, bool)
    for i in range(4):
        (ax, ay), (bx, by) = c[i], c[(i + 1) % 4]
        inside &= (bx - ax) * (y - ay) - (by - ay) * (x - ax) > 0
    assert inside.sum() > 100 and ((out == BUILDING) == inside).all()
    assert (out == LAYOUT_CLASSES.index("water")).sum() == 16  # 8 m pool = 4 x 4 pixels
    assert (burn_boxes(base, boxes, GRID, {"*": None, "pool": "water"}) == BUILDING).sum() == 0
    with pytest.raises(ConditionError, match="not a layout class"):
        burn_boxes(base, boxes, GRID, {"house": "houses"})


def _boxes():
    return [Box("small vehicle", tuple(rotated_rect(X0 + 30, Y0 - 30, 10, 4, 20))),
            Box("house", tuple(rotated_rect(X0 + 2, Y0 - 2, 10, 10, 0))),      # cut by the image's corner
            Box("house", tuple(rotated_rect(X0 + 500, Y0 - 30, 10, 4, 0)))]     # outside the image


def test_coco_structure(tmp_path):
    grid2 = GRID.window(10, 10, 64, 48)
    coco = coco_dataset([("a.tif", GRID, _boxes()), ("b.tif", grid2, _boxes()[:1])])
    assert set(coco) >= {"images", "annotations", "categories", "info", "licenses"}
    assert [c["name"] for c in coco["categories"]] == ["house", "small vehicle"]
    cats = {c["id"] for c in coco["categories"]}
    imgs = {i["id"]: i for i in coco["images"]}
    assert imgs[1] == {"id": 1, "file_name": "a.tif", "width": 64, "height": 48}
    ids = [a["id"] for a in coco["annotations"]]
    assert len(ids) == len(set(ids)) == 3  # the box outside image a is left out
    for a in coco["annotations"]:
        assert a["image_id"] in imgs and a["category_id"] in cats and a["iscrowd"] == 0
        x, y, w, h = a["bbox"]
        im = imgs[a["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
        assert a["area"] == pytest.approx(w * h, abs=0.05)
        seg = a["segmentation"][0]
        assert len(seg) >= 6 and len(seg) % 2 == 0
        assert all(0 <= v <= im["width"] for v in seg[0::2]) and all(0 <= v <= im["height"] for v in seg[1::2])
    corner = [a for a in coco["annotations"] if a["image_id"] == 1 and a["category_id"] == 1][0]
    assert corner["bbox"] == [0.0, 0.0, 3.5, 3.5]  # a 10 m house centred 2 m from the corner, clipped
    path = write_json(str(tmp_path / "coco.json"), coco)
    assert json.load(open(path)) == coco


def test_dota_lines():
    text = dota_text(_boxes(), GRID)
    lines = text.splitlines()
    assert lines[0] == "imagesource:rsgen" and lines[1].startswith("gsd:") and float(lines[1][4:]) == \
        pytest.approx(2.0, rel=0.01)
    objs = [ln.split() for ln in lines[2:]]
    assert len(objs) == 2
    for tok in objs:
        assert len(tok) == 10 and tok[9] == "0"
        xy = np.array(tok[:8], float).reshape(4, 2)
        s = sum(xy[i, 0] * xy[(i + 1) % 4, 1] - xy[(i + 1) % 4, 0] * xy[i, 1] for i in range(4))
        assert s > 0  # clockwise on screen
    assert objs[0][8] == "small-vehicle"
    assert np.array(objs[0][:8], float).reshape(4, 2).mean(0) == pytest.approx((15.0, 15.0), abs=0.05)


def test_geojson_reads_back_in_qgis(qgis_app, tmp_path):
    path = write_json(str(tmp_path / "boxes.geojson"), geojson(_boxes(), GRID, image="a.tif"))
    lyr = QgsVectorLayer(path, "b", "ogr")
    assert lyr.isValid() and lyr.featureCount() == 3 and lyr.crs().authid() == UTM
    f = next(lyr.getFeatures())
    assert f["category"] == "small vehicle" and f["image"] == "a.tif"
    assert f.geometry().centroid().asPoint().x() == pytest.approx(X0 + 30)
