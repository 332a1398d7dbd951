"""Object boxes from a point or polygon layer: what to draw into the layout, and dataset labels to export.

A box is four corners. Polygons give their minimum rotated rectangle (found in a local metric frame, so a
building in EPSG:4326 keeps its right angles); points give a rectangle from size attributes: width_m (across),
length_m (along) and angle (the long axis's azimuth, degrees clockwise from north, as a GIS user measures
a building's orientation). The same corners, in map units or in a grid's pixel coordinates (col, row from the
top-left corner of the top-left pixel, as COCO and DOTA expect), give the horizontal box (xmin, ymin, xmax, ymax)
and the rotated one (cx, cy, w, h, angle: w along the first edge, angle of that edge from the +x axis).

Boxes condition the model through the layout: burn_boxes() draws them as filled rotated rectangles, class per
category through a mapping (building by default).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from qgis.core import (QgsGeometry, QgsMapLayer, QgsPointXY, QgsProject, QgsRectangle, QgsVectorLayer,
                       QgsWkbTypes)
from qgis.PyQt.QtGui import QTransform

from ..core.conditions.encoding import LAYOUT_CLASSES, NO_LAYOUT
from ..core.errors import ConditionError, OutputError
from ..core.geo.georef import Grid, gsd_metres_mean, parse_crs
from .rasterize import burn, grid_geometries, metre_scale, new_counts, plain

SIZE_FIELDS = ("width_m", "length_m", "angle")
Corners = Tuple[Tuple[float, float], ...]


@dataclass(frozen=True)
class Box:
    """One object: its category and four corners (map units of the grid's CRS, or pixels after to_pixels)."""

    category: str
    corners: Corners
    fid: int = -1

    def hbb(self) -> Tuple[float, float, float, float]:
        xs, ys = zip(*self.corners)
        return (min(xs), min(ys), max(xs), max(ys))

    def rotated(self) -> Tuple[float, float, float, float, float]:
        """(cx, cy, w, h, angle in degrees): w along the first edge; angle of that edge from +x, in [-90, 90)."""
        c = np.asarray(self.corners, float)
        cx, cy = c.mean(0)
        e1, e2 = c[1] - c[0], c[2] - c[1]
        angle = math.degrees(math.atan2(e1[1], e1[0]))
        angle = (angle + 90.0) % 180.0 - 90.0
        return float(cx), float(cy), float(np.hypot(*e1)), float(np.hypot(*e2)), angle

    def to_pixels(self, grid: Grid) -> "Box":
        x0, px, _, y0, _, npy = grid.transform
        return Box(self.category, tuple(((x - x0) / px, (y - y0) / npy) for x, y in self.corners), self.fid)


def _corners_of(geom: QgsGeometry) -> Corners:
    ring = geom.asPolygon()[0] if not geom.isMultipart() else geom.asMultiPolygon()[0][0]
    return tuple((p.x(), p.y()) for p in ring[:4])


def oriented_box(geom: QgsGeometry, scale: Tuple[float, float]) -> Optional[Corners]:
    """Minimum rotated rectangle of a geometry, computed in metres (scale = metres per unit along x, y)."""
    mx, my = scale
    g = QgsGeometry(geom)
    g.transform(QTransform.fromScale(mx, my))
    obb, area = g.orientedMinimumBoundingBox()[:2]
    if obb is None or obb.isNull() or obb.isEmpty() or not area > 0:
        return None
    obb.transform(QTransform.fromScale(1.0 / mx, 1.0 / my))
    return _corners_of(obb)


def point_box(x: float, y: float, width_m: float, length_m: float, azimuth: float,
              scale: Tuple[float, float]) -> Corners:
    """Rectangle centred on (x, y): length_m along the azimuth (clockwise from north), width_m across it."""
    mx, my = scale
    t = math.radians(azimuth)
    along = (math.sin(t), math.cos(t))     # east, north components in metres
    across = (math.cos(t), -math.sin(t))
    out = []
    for sa, sc in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        dx = sa * length_m / 2 * along[0] + sc * width_m / 2 * across[0]
        dy = sa * length_m / 2 * along[1] + sc * width_m / 2 * across[1]
        out.append((x + dx / mx, y + dy / my))
    return tuple(out)


def boxes_from_layer(layer: Optional[QgsMapLayer], category_field: str, grid: Grid, *,
                     default_size_m: Optional[float] = None, selected_only: bool = False,
                     project: Optional[QgsProject] = None) -> Tuple[List[Box], Dict[str, Any]]:
    """Boxes (grid CRS) of the layer's features that touch the grid, and counts of what was left out and why."""
    if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise ConditionError("Choose a valid point or polygon layer for the object boxes.")
    name = layer.name()
    if layer.geometryType() not in (QgsWkbTypes.GeometryType.PointGeometry, QgsWkbTypes.GeometryType.PolygonGeometry):
        raise ConditionError(f"The boxes layer {name!r} must hold points or polygons.")
    idx = layer.fields().lookupField(category_field or "")
    if idx < 0:
        raise ConditionError(f"The boxes layer {name!r} has no field {category_field!r} for the category; its "
                             f"fields are: {', '.join(layer.fields().names()) or 'none'}.")
    cat_name = layer.fields().at(idx).name()
    size = {f: layer.fields().lookupField(f) for f in SIZE_FIELDS}
    points = layer.geometryType() == QgsWkbTypes.GeometryType.PointGeometry
    if points and default_size_m is None and (size["width_m"] < 0 or size["length_m"] < 0):
        raise ConditionError(f"The point layer {name!r} needs fields width_m and length_m (metres) to make boxes, "
                             "or a default box size.")
    attrs = [cat_name] + [layer.fields().at(i).name() for i in size.values() if i >= 0]
    counts = dict(new_counts(), no_category=0, no_size=0, degenerate=0)
    scale = metre_scale(grid)
    boxes: List[Box] = []
    for feature, kind, geom in grid_geometries(layer, grid, counts, clip=False, attributes=attrs,
                                               selected_only=selected_only, project=project):
        cat = plain(feature.attribute(idx))
        if cat is None or str(cat).strip() == "":
            counts["no_category"] += 1
            continue
        if kind == "polygon":
            corners = oriented_box(geom, scale)
            if corners is None:
                counts["degenerate"] += 1
                continue
            boxes.append(Box(str(cat).strip(), corners, feature.id()))
            continue
        vals = {f: (plain(feature.attribute(i)) if i >= 0 else None) for f, i in size.items()}
        try:
            w = float(vals["width_m"] if vals["width_m"] is not None else default_size_m)
            ln = float(vals["length_m"] if vals["length_m"] is not None else default_size_m)
            az = float(vals["angle"] or 0.0)
        except (TypeError, ValueError):
            counts["no_size"] += 1
            continue
        if not (w > 0 and ln > 0 and math.isfinite(az)):
            counts["no_size"] += 1
            continue
        for part in (geom.asMultiPoint() if geom.isMultipart() else [geom.asPoint()]):
            boxes.append(Box(str(cat).strip(), point_box(part.x(), part.y(), w, ln, az, scale), feature.id()))
    counts["boxes"] = len(boxes)
    return boxes, counts


def box_geometry(box: Box) -> QgsGeometry:
    return QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in box.corners + box.corners[:1]]])


def class_of(category: str, mapping: Optional[Mapping[str, Optional[str]]]) -> Optional[str]:
    """Layout class of a category: mapping[category], else mapping["*"], else building. None: not drawn."""
    if mapping is None:
        return "building"
    cls = mapping.get(category, mapping.get("*", "building"))
    if cls is not None and cls not in LAYOUT_CLASSES:
        raise ConditionError(f"Category {category!r} maps to {cls!r}, which is not a layout class "
                             f"({', '.join(LAYOUT_CLASSES)}).")
    return cls


def burn_boxes(layout: np.ndarray, boxes: Sequence[Box], grid: Grid,
               mapping: Optional[Mapping[str, Optional[str]]] = None) -> np.ndarray:
    """A copy of `layout` with the boxes drawn on top as filled rotated rectangles (pixel centre inside)."""
    shapes = []
    for b in boxes:
        cls = class_of(b.category, mapping)
        if cls is not None:
            shapes.append((box_geometry(b), LAYOUT_CLASSES.index(cls)))
    drawn = burn(grid, shapes, NO_LAYOUT)
    return np.where(drawn != NO_LAYOUT, drawn, np.asarray(layout, np.uint8)).astype(np.uint8)


def _in_image(box: Box, grid: Grid) -> Optional[Tuple[float, float, float, float]]:
    """Pixel hbb clipped to the image, or None when the box does not reach into it."""
    x0, y0, x1, y1 = box.hbb()
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(grid.width)), min(y1, float(grid.height))
    return (cx0, cy0, cx1, cy1) if cx1 > cx0 and cy1 > cy0 else None


def _clockwise(corners: Corners) -> Corners:
    """Clockwise as seen on screen in pixel coordinates (rows grow downwards): positive shoelace sum."""
    c = list(corners)
    s = sum(c[i][0] * c[(i + 1) % 4][1] - c[(i + 1) % 4][0] * c[i][1] for i in range(4))
    return tuple(c if s > 0 else [c[0]] + c[1:][::-1])


def coco_dataset(images: Sequence[Tuple[str, Grid, Sequence[Box]]],
                 categories: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """COCO detection JSON: horizontal pixel boxes [x, y, w, h] clipped to each image; the rotated rectangle
    (clipped to the image) as the segmentation polygon."""
    names = list(categories) if categories else sorted({b.category for _, _, bs in images for b in bs})
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    out: Dict[str, Any] = {"info": {"description": "rsgen synthetic imagery (synthetic=true)", "version": "1.0"},
                           "licenses": [], "images": [], "annotations": [],
                           "categories": [{"id": cat_id[n], "name": n, "supercategory": "object"} for n in names]}
    for image_id, (file_name, grid, boxes) in enumerate(images, 1):
        out["images"].append({"id": image_id, "file_name": file_name, "width": grid.width, "height": grid.height})
        frame = QgsGeometry.fromRect(QgsRectangle(0, 0, grid.width, grid.height))
        for box in boxes:
            pb = box.to_pixels(grid)
            hbb = _in_image(pb, grid)
            if hbb is None or box.category not in cat_id:
                continue
            seg = box_geometry(pb).intersection(frame)
            polygon = seg.type() == QgsWkbTypes.GeometryType.PolygonGeometry and not seg.isMultipart()
            ring = seg.asPolygon()[0] if polygon else []
            w, h = hbb[2] - hbb[0], hbb[3] - hbb[1]
            out["annotations"].append({
                "id": len(out["annotations"]) + 1, "image_id": image_id, "category_id": cat_id[box.category],
                "bbox": [round(v, 2) for v in (hbb[0], hbb[1], w, h)], "area": round(w * h, 2), "iscrowd": 0,
                "segmentation": [[round(v, 2) for p in ring[:-1] for v in (p.x(), p.y())]] if ring else []})
    return out


def dota_text(boxes: Sequence[Box], grid: Grid, difficult: int = 0) -> str:
    """DOTA v1 label file: 'imagesource:' and 'gsd:' header lines, then 'x1 y1 ... x4 y4 category difficult'
    per object (pixel corners, clockwise); boxes that do not reach into the image are left out."""
    lines = ["imagesource:rsgen", f"gsd:{gsd_metres_mean(grid):.6g}"]
    for box in boxes:
        pb = box.to_pixels(grid)
        if _in_image(pb, grid) is None:
            continue
        xy = " ".join(f"{v:.1f}" for p in _clockwise(pb.corners) for v in p)
        lines.append(f"{xy} {box.category.replace(' ', '-')} {int(difficult)}")
    return "\n".join(lines) + "\n"


def geojson(boxes: Sequence[Box], grid: Grid, image: Optional[str] = None) -> Dict[str, Any]:
    """Georeferenced boxes as a GeoJSON FeatureCollection in the grid's CRS (named in the "crs" member, which
    GDAL and QGIS read), with the rotated box in map units and the pixel hbb of the image."""
    auth = parse_crs(grid.crs_wkt).to_authority()
    crs_name = f"urn:ogc:def:crs:{auth[0]}::{auth[1]}" if auth else None
    feats = []
    for box in boxes:
        pb = box.to_pixels(grid)
        cx, cy, w, h, a = box.rotated()
        props = {"category": box.category, "cx": cx, "cy": cy, "width": w, "height": h, "angle": a,
                 "hbb_px": [round(v, 2) for v in pb.hbb()]}
        if image is not None:
            props["image"] = image
        ring = [list(p) for p in box.corners] + [list(box.corners[0])]
        feats.append({"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    out: Dict[str, Any] = {"type": "FeatureCollection", "features": feats}
    if crs_name:
        out["crs"] = {"type": "name", "properties": {"name": crs_name}}
    return out


def write_text(path: str, text: str) -> str:
    """Atomic write (temporary file in the folder, then rename), like the GeoTIFFs: no half-written labels."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rsgen-", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"Cannot write {path}: {err.strerror or err}") from err
    return path


def write_json(path: str, obj: Any) -> str:
    return write_text(path, json.dumps(obj, indent=1))
