"""Vector layers -> layout class raster on a request's exact pixel grid (the model's layout condition).

QGIS reads, reprojects and repairs the features (so every provider, CRS and on-the-fly transform the user sees
on the map works); GDAL burns them (gdal.RasterizeLayer into a MEM raster with the grid's own geotransform,
ALL_TOUCHED=FALSE: a pixel takes a shape's class when its centre is inside the shape; no antialiasing, so the
class map lines up with the generated image to the pixel). Vertices are reprojected, as QGIS draws layers in
another CRS on the fly, so the layout matches what the user sees.

Pixels no feature covers are `background` (0), not "no information" (255): the user chose the layers as the map
of the area, and an empty spot on a map is ground without roads, buildings, green or water. `fill=NO_LAYOUT`
says "unknown" instead, for layers that only cover part of the area.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from osgeo import gdal, ogr
from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCsException, QgsFeature,
                       QgsFeatureRequest, QgsFeedback, QgsGeometry, QgsMapLayer, QgsPalettedRasterRenderer,
                       QgsProject, QgsRasterLayer, QgsRectangle, QgsVectorLayer, QgsWkbTypes)
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QColor, QTransform

from ..core.conditions.encoding import LAYOUT_CLASSES, NO_LAYOUT
from ..core.errors import Cancelled, ConditionError, CrsError, OutputError
from ..core.geo.georef import Grid, gsd_metres
from ..core.geo.geotiff import check_writable
from ..core.conditions.rules import LAYOUT_COLOURS, Rule, best_rule

KINDS = {QgsWkbTypes.GeometryType.PointGeometry: "point", QgsWkbTypes.GeometryType.LineGeometry: "line",
         QgsWkbTypes.GeometryType.PolygonGeometry: "polygon"}
COUNTERS = ("repaired", "skipped_invalid", "empty_geometry", "outside", "unprojectable")


def grid_crs(grid: Grid) -> QgsCoordinateReferenceSystem:
    crs = QgsCoordinateReferenceSystem.fromWkt(grid.crs_wkt)
    if not crs.isValid():
        raise CrsError("QGIS cannot read the output grid's CRS; choose another output CRS.")
    return crs


def grid_rectangle(grid: Grid, margin: float = 0.0) -> QgsRectangle:
    xmin, ymin, xmax, ymax = grid.bounds
    return QgsRectangle(xmin - margin, ymin - margin, xmax + margin, ymax + margin)


def metre_scale(grid: Grid) -> Tuple[float, float]:
    """Ground metres per CRS unit along x and y at the grid centre (degrees in EPSG:4326, Mercator's stretch)."""
    gx, gy = gsd_metres(grid)
    px, py = grid.pixel_size
    return gx / px, gy / py


def plain(value: Any) -> Any:
    """A QGIS attribute value as Python: NULL (a null QVariant) becomes None."""
    if value is None or (isinstance(value, QVariant) and value.isNull()):
        return None
    return value


def polygon_parts(geom: QgsGeometry) -> Optional[QgsGeometry]:
    """The polygonal parts of a (repaired) geometry; makeValid may return lines or a mixed collection."""
    if geom.type() == QgsWkbTypes.GeometryType.PolygonGeometry:
        return geom
    parts = [p for p in geom.asGeometryCollection()
             if p.type() == QgsWkbTypes.GeometryType.PolygonGeometry and not p.isEmpty()]
    return QgsGeometry.collectGeometry(parts) if parts else None


def repair(geom: QgsGeometry) -> Optional[QgsGeometry]:
    """A valid polygon from an invalid one (a bow-tie becomes two triangles), or None if nothing area-like is left."""
    fixed = geom.makeValid()
    if fixed is None or fixed.isNull() or fixed.isEmpty():
        return None
    fixed = polygon_parts(fixed)
    return fixed if fixed is not None and fixed.isGeosValid() else None


def buffer_metres(geom: QgsGeometry, width_m: float, scale: Tuple[float, float]) -> QgsGeometry:
    """Buffer to a full ground width of width_m: done in a local metric frame (x, y scaled by metres per unit at the
    grid centre) so a 10 m road is 10 m wide in UTM, Web Mercator and degrees alike."""
    mx, my = scale
    g = QgsGeometry(geom)
    g.transform(QTransform.fromScale(mx, my))
    g = g.buffer(width_m / 2.0, 8)
    g.transform(QTransform.fromScale(1.0 / mx, 1.0 / my))
    return g


def new_counts() -> Dict[str, int]:
    return {k: 0 for k in COUNTERS}


def grid_geometries(layer: QgsVectorLayer, grid: Grid, counts: Dict[str, int], *, clip_margin: float = 0.0,
                    clip: bool = True, selected_only: bool = False, attributes: Sequence[str] = (), project: Optional[QgsProject] = None,
                    feedback: Optional[QgsFeedback] = None) -> Iterator[Tuple[QgsFeature, str, QgsGeometry]]:
    """(feature, kind, geometry in the grid's CRS) for the features near the grid, repaired polygons included.

    Counts what it drops in `counts` (see COUNTERS) so the user learns why a feature is missing. Features away from
    the grid extent plus clip_margin (grid units) are left out; the others are clipped to that area (cheap buffers
    of long lines and huge polygons), or kept whole with clip=False (boxes need the whole outline)."""
    dest = grid_crs(grid)
    xform = None
    if layer.crs().isValid() and layer.crs() != dest:
        xform = QgsCoordinateTransform(layer.crs(), dest, project or QgsProject.instance())
    area = grid_rectangle(grid, clip_margin)
    request = QgsFeatureRequest()
    if attributes:
        request.setSubsetOfAttributes(list(attributes), layer.fields())
    else:
        request.setNoAttributes()
    if selected_only:
        request.setFilterFids(layer.selectedFeatureIds())
    try:  # only features near the grid are read
        request.setFilterRect(xform.transformBoundingBox(area, Qgis.TransformDirection.Reverse)
                              if xform else area)
    except QgsCsException:
        pass  # the extent has no image in the layer's CRS: test every feature instead
    total = layer.selectedFeatureCount() if selected_only else layer.featureCount()
    seen = 0
    for feature in layer.getFeatures(request):
        seen += 1
        if feedback is not None and feedback.isCanceled():
            raise Cancelled("Cancelled while reading the vector layers; nothing was written.")
        geom = feature.geometry()
        kind = KINDS.get(geom.type()) if geom is not None and not geom.isNull() else None
        if kind is None or geom.isEmpty():
            counts["empty_geometry"] += 1
            continue
        geom = QgsGeometry(geom)
        if QgsWkbTypes.isCurvedType(geom.wkbType()):
            geom.convertToStraightSegment()
        if kind == "polygon" and not geom.isGeosValid():
            geom = repair(geom)
            if geom is None:
                counts["skipped_invalid"] += 1
                continue
            counts["repaired"] += 1
        if xform is not None:
            try:
                geom.transform(xform)
            except QgsCsException:
                counts["unprojectable"] += 1
                continue
            if not np.all(np.isfinite([geom.boundingBox().xMinimum(), geom.boundingBox().yMaximum()])):
                counts["unprojectable"] += 1
                continue
        if not geom.boundingBox().intersects(area):
            counts["outside"] += 1
            continue
        if clip and kind != "point":
            geom = geom.clipped(area)
            if geom.isNull() or geom.isEmpty():
                counts["outside"] += 1
                continue
        yield feature, kind, geom
    if total > seen:
        counts["outside"] += total - seen  # left out by the extent filter


def burn(grid: Grid, shapes: Sequence[Tuple[QgsGeometry, int]], fill: int = 0) -> np.ndarray:
    """(H, W) uint8: each shape's value where the pixel centre is inside it; later shapes overwrite earlier ones."""
    ds = gdal.GetDriverByName("MEM").Create("", grid.width, grid.height, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(tuple(grid.transform))  # no SRS on raster nor layer: GDAL must not reproject anything
    ds.GetRasterBand(1).Fill(int(fill))
    if shapes:
        src = ogr.GetDriverByName("Memory").CreateDataSource("rsgen")
        lyr = src.CreateLayer("shapes", None, ogr.wkbUnknown)
        lyr.CreateField(ogr.FieldDefn("v", ogr.OFTInteger))
        defn = lyr.GetLayerDefn()
        for geom, value in shapes:
            og = ogr.CreateGeometryFromWkb(bytes(geom.asWkb()))
            if og is None:
                continue
            f = ogr.Feature(defn)
            f.SetGeometry(og)
            f.SetField("v", int(value))
            lyr.CreateFeature(f)
        gdal.PushErrorHandler("CPLQuietErrorHandler")  # "no SRS on layer, assuming matching": that is the intent
        try:
            err = gdal.RasterizeLayer(ds, [1], lyr, options=["ATTRIBUTE=v", "ALL_TOUCHED=FALSE"])
        finally:
            gdal.PopErrorHandler()
        if err != 0:
            raise ConditionError(f"GDAL could not rasterize the features: {gdal.GetLastErrorMsg()}")
    return ds.GetRasterBand(1).ReadAsArray().astype(np.uint8)


def _rule_fields(layer: QgsVectorLayer, rules: Sequence[Rule]) -> Dict[str, str]:
    """Rule field -> the layer's field name (QGIS lookup, case-blind); a required missing field is an error."""
    found: Dict[str, str] = {}
    for i, rule in enumerate(rules):
        if not rule.field or rule.field in found or not rule.applies_to("any", layer.name()):
            continue
        idx = layer.fields().lookupField(rule.field)
        if idx >= 0:
            found[rule.field] = layer.fields().at(idx).name()
        elif not rule.optional:
            names = ", ".join(layer.fields().names()) or "none"
            raise ConditionError(f"Layer {layer.name()!r} has no field {rule.field!r}, which rule {i + 1} "
                                 f"(class {rule.cls}) needs. The layer's fields: {names}. Fix the rules file, or "
                                 "mark the rule \"optional\": true.")
    return found


def layers_to_layout(layers: Sequence[QgsMapLayer], rules: Sequence[Rule], grid: Grid,
                     feedback: Optional[QgsFeedback] = None, project: Optional[QgsProject] = None,
                     fill: int = 0) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Rasterize the layers by the rules onto `grid`: ((H, W) uint8 class ids, stats).

    stats: features per class, matched/unmatched, repaired/skipped invalid geometries, features outside the extent,
    empty layers, per-layer counts, and warnings for the user (stats_message() says it in one line)."""
    rules = list(rules)
    if not layers:
        raise ConditionError("Choose at least one vector layer to draw the layout from.")
    if not rules:
        raise ConditionError("There are no layout rules; use the default OSM rules or a rules file.")
    scale = metre_scale(grid)
    widest = max(r.buffer_m for r in rules)
    margin = widest / 2.0 / min(scale) + 2.0 * max(grid.pixel_size)
    stats: Dict[str, Any] = {"features": {c: 0 for c in LAYOUT_CLASSES}, "matched": 0, "unmatched": 0,
                             **new_counts(), "empty_layers": [], "layers": {}, "warnings": []}
    shapes: List[Tuple[int, int, int, QgsGeometry, int]] = []
    for layer in layers:
        if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
            raise ConditionError(f"Layer {getattr(layer, 'name', lambda: '?')()!r} is not a valid vector layer.")
        name = layer.name()
        if layer.geometryType() not in KINDS:
            stats["warnings"].append(f"Layer {name!r} has no geometries; it was left out.")
            continue
        if layer.featureCount() == 0:
            stats["empty_layers"].append(name)
            continue
        fields = _rule_fields(layer, rules)
        if not fields and not any(not r.field and r.applies_to("any", name) for r in rules):
            wanted = ", ".join(sorted({r.field for r in rules if r.field and r.applies_to("any", name)}))
            raise ConditionError(f"Layer {name!r} has none of the fields the rules look at ({wanted or 'none'}); "
                                 f"its fields are: {', '.join(layer.fields().names()) or 'none'}. Choose layers "
                                 "with OSM tags, or a rules file that names this layer's fields.")
        per = {"features": 0, "unmatched": 0}
        counts = new_counts()
        for feature, kind, geom in grid_geometries(layer, grid, counts, clip_margin=margin,
                                                   attributes=list(fields.values()), project=project,
                                                   feedback=feedback):
            attrs = {rf: plain(feature.attribute(actual)) for rf, actual in fields.items()}
            hit = best_rule(attrs, rules, kind, name)
            if hit is None:
                per["unmatched"] += 1
                continue
            index, rule = hit
            if rule.buffer_m > 0 and kind != "polygon":  # widths are for lines and points
                geom = buffer_metres(geom, rule.buffer_m, scale)
            shapes.append((rule.priority, index, len(shapes), geom, rule.class_id))
            stats["features"][rule.cls] += 1
            per["features"] += 1
        for k, v in counts.items():
            stats[k] += v
        stats["matched"] += per["features"]
        stats["unmatched"] += per["unmatched"]
        stats["layers"][name] = dict(per, **counts)
    if not stats["layers"]:
        raise ConditionError("All the chosen layers are empty (" + ", ".join(stats["empty_layers"] or ["none"]) +
                             "); choose layers with features in the area.")
    if stats["matched"] == 0:
        stats["warnings"].append("No feature inside the extent matched a rule: the layout is all background. "
                                 "Check the layers' attributes against the rules.")
    shapes.sort(key=lambda s: s[:3])  # priority, then rule order, then reading order: higher priority on top
    layout = burn(grid, [(g, v) for _, _, _, g, v in shapes], fill)
    return layout, stats


def stats_message(stats: Dict[str, Any]) -> str:
    """One line for the message bar or the Processing log."""
    drawn = ", ".join(f"{c} {n}" for c, n in stats["features"].items() if n)
    parts = [f"Layout: {stats['matched']} features drawn" + (f" ({drawn})" if drawn else "")]
    if stats["unmatched"]:
        parts.append(f"{stats['unmatched']} matched no rule")
    if stats["repaired"] or stats["skipped_invalid"]:
        parts.append(f"invalid geometries: {stats['repaired']} repaired, {stats['skipped_invalid']} skipped")
    for key, text in (("outside", "outside the extent"), ("empty_geometry", "without geometry"),
                      ("unprojectable", "not projectable to the output CRS")):
        if stats[key]:
            parts.append(f"{stats[key]} {text}")
    if stats["empty_layers"]:
        parts.append("empty layers: " + ", ".join(stats["empty_layers"]))
    return "; ".join(parts) + "."


def write_layout(path: str, layout: np.ndarray, grid: Grid) -> str:
    """The class raster as a paletted GeoTIFF (legend colours, 255 = no data), written atomically.

    Class names go in a dataset metadata item, not GDAL category names: GTiff keeps those in an .aux.xml sidecar,
    which would be named after the temporary file. style_layout_layer() gives QGIS the named legend."""
    check_writable(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".rsgen-layout-", suffix=".tif", dir=folder)
    os.close(fd)
    try:
        ds = gdal.GetDriverByName("GTiff").Create(tmp, grid.width, grid.height, 1, gdal.GDT_Byte,
                                                  ["COMPRESS=DEFLATE"])
        if ds is None:
            raise OutputError(f"Cannot write {path}: {gdal.GetLastErrorMsg()}")
        ds.SetGeoTransform(tuple(grid.transform))
        ds.SetProjection(grid.crs_wkt)
        band = ds.GetRasterBand(1)
        table = gdal.ColorTable()
        for i, name in enumerate(LAYOUT_CLASSES):
            table.SetColorEntry(i, LAYOUT_COLOURS[name] + (255,))
        table.SetColorEntry(NO_LAYOUT, (0, 0, 0, 0))
        band.SetRasterColorTable(table)
        band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
        band.SetNoDataValue(NO_LAYOUT)
        band.WriteArray(np.asarray(layout, np.uint8))
        ds.SetMetadataItem("layout_classes", ",".join(LAYOUT_CLASSES))
        ds.FlushCache()
        ds = None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def style_layout_layer(layer: QgsRasterLayer) -> None:
    """A paletted renderer whose legend names the classes (QGIS shows only numbers from a bare colour table)."""
    classes = [QgsPalettedRasterRenderer.Class(i, QColor(*LAYOUT_COLOURS[n]), n) for i, n in enumerate(LAYOUT_CLASSES)]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes))
    layer.triggerRepaint()
