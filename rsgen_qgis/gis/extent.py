"""Where to generate: the extent and its CRS, taken from the canvas, a layer or a rectangle drawn on the map.

The engine wants plain numbers and WKT (core.request), so everything QGIS-specific stops here: QgsRectangle and
QgsCoordinateReferenceSystem go in, an `Extent` of floats and a WKT string comes out. WKT2 (not an EPSG code)
keeps custom CRSs intact on the way into the GeoTIFF.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCsException, QgsGeometry,
                       QgsMapLayer, QgsPointXY, QgsProject, QgsRectangle, QgsUnitTypes, QgsVectorLayer, QgsWkbTypes)
from qgis.gui import QgsMapCanvas, QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor

from ..core.errors import CrsError, ExtentError
from ..core.geo.georef import Grid, grid_for_request, gsd_metres_mean
from ..core.request import DEFAULT_PIXEL_BUDGET, GenerationRequest


@dataclass(frozen=True)
class Extent:
    """An extent in plain values: what a GenerationRequest needs (bounds in crs_wkt's units)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    crs_wkt: str

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        return (self.xmin, self.ymin, self.xmax, self.ymax)

    @property
    def size(self) -> Tuple[float, float]:
        return (self.xmax - self.xmin, self.ymax - self.ymin)


def crs_to_wkt(crs: QgsCoordinateReferenceSystem) -> str:
    """WKT2_2019 of a QGIS CRS; an unset CRS is a user mistake we name, not a pyproj error later."""
    if not crs.isValid():
        raise CrsError("The map has no coordinate reference system; set the project CRS "
                       "(Project > Properties > CRS) first.")
    return crs.toWkt(QgsCoordinateReferenceSystem.WktVariant.WKT2_2019)


def describe_crs(crs: QgsCoordinateReferenceSystem) -> str:
    """'EPSG:32734 - WGS 84 / UTM zone 34S' (or the custom CRS's name) for labels."""
    return crs.userFriendlyIdentifier() if crs.isValid() else "no CRS"


def unit_suffix(crs: QgsCoordinateReferenceSystem) -> str:
    """Abbreviation of the CRS's map units ('m', 'deg', 'ft'): the unit a pixel size is given in."""
    return QgsUnitTypes.toAbbreviatedString(crs.mapUnits()) if crs.isValid() else ""


def from_rectangle(rect: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> Extent:
    if rect.isNull() or rect.isEmpty():
        raise ExtentError("The extent is empty; pan or zoom the map, or draw a larger rectangle.")
    return Extent(rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum(), crs_to_wkt(crs))


def canvas_extent(canvas: QgsMapCanvas) -> Tuple[Extent, QgsCoordinateReferenceSystem]:
    """What the map shows now, in the map's CRS."""
    crs = canvas.mapSettings().destinationCrs()
    return from_rectangle(canvas.extent(), crs), crs


def crs_from_text(text: str) -> QgsCoordinateReferenceSystem:
    """A CRS as the engine records it (WKT, "EPSG:xxxx" or a PROJ string) as a QGIS CRS."""
    crs = QgsCoordinateReferenceSystem()
    if not text or not crs.createFromUserInput(text) or not crs.isValid():
        raise CrsError(f"QGIS cannot read the recorded CRS {text[:60]!r}.")
    return crs


def extent_in(bounds: Tuple[float, float, float, float], crs: QgsCoordinateReferenceSystem,
              dest_crs: QgsCoordinateReferenceSystem, project: Optional[QgsProject] = None) -> QgsRectangle:
    """bounds (xmin, ymin, xmax, ymax) in crs as a rectangle in dest_crs (the bounding box when they differ)."""
    rect = QgsRectangle(*bounds)
    if crs == dest_crs or not dest_crs.isValid():
        return rect
    xform = QgsCoordinateTransform(crs, dest_crs, project or QgsProject.instance())
    try:
        return xform.transformBoundingBox(rect)
    except QgsCsException as exc:
        raise ExtentError(f"The extent cannot be projected to {describe_crs(dest_crs)}: {exc}") from exc


def layer_extent(layer: Optional[QgsMapLayer], dest_crs: QgsCoordinateReferenceSystem,
                 project: Optional[QgsProject] = None, selected_only: bool = False) -> Extent:
    """A layer's full extent, or the bounding box of its selected features, reprojected into dest_crs (the map
    CRS, so output and map agree)."""
    if layer is None or not layer.isValid():
        raise ExtentError("Choose a valid layer to take the extent from.")
    if selected_only and isinstance(layer, QgsVectorLayer):
        if layer.selectedFeatureCount() == 0:
            raise ExtentError(f"Layer {layer.name()!r} has no selected features: select some on the map, or "
                              "untick Selected features only.")
        rect = QgsRectangle(layer.boundingBoxOfSelected())
    else:
        rect = QgsRectangle(layer.extent())
    if layer.crs().isValid() and dest_crs.isValid() and layer.crs() != dest_crs:
        xform = QgsCoordinateTransform(layer.crs(), dest_crs, project or QgsProject.instance())
        try:
            rect = xform.transformBoundingBox(rect)
        except QgsCsException as exc:
            raise ExtentError(f"The extent of layer {layer.name()!r} cannot be projected to "
                              f"{describe_crs(dest_crs)}: {exc}") from exc
    if rect.isNull() or rect.isEmpty():
        raise ExtentError(f"Layer {layer.name()!r} has an empty extent (a single point?); choose another "
                          "layer or draw a rectangle.")
    return from_rectangle(rect, dest_crs)


def grid_and_gsd(extent: Extent, gsd: Optional[float] = None, width: Optional[int] = None,
                 height: Optional[int] = None, pixel_budget: int = DEFAULT_PIXEL_BUDGET,
                 large_area: bool = False) -> Tuple[Grid, float]:
    """The grid the engine would make for this extent and size, and its ground GSD in metres.

    Goes through the engine's own grid_for_request so the dock shows exactly what Generate will produce;
    raises the engine's RsgenError (budget, CRS area, empty extent) for the dock to show inline."""
    req = GenerationRequest(extent=extent.bounds, crs=extent.crs_wkt, output="", gsd=gsd, width=width,
                            height=height, pixel_budget=pixel_budget, large_area=large_area)
    grid = grid_for_request(req)
    return grid, gsd_metres_mean(grid)


def fit_grid(extent: Extent, mode: str, gsd: float, width: int, height: int,
             pixel_budget: int = DEFAULT_PIXEL_BUDGET, large_area: bool = False) -> Tuple[Grid, float]:
    """The grid when the user last set `mode` ("gsd", "width" or "height"): that value is kept as the extent
    changes (pans keep the pixel size; a typed width keeps the width and follows the extent's aspect).
    large_area lifts the pixel budget (the large-area path streams blocks to disk)."""
    if mode == "gsd":
        return grid_and_gsd(extent, gsd=gsd, pixel_budget=pixel_budget, large_area=large_area)
    ew, eh = extent.size
    if mode == "width":
        height = max(1, round(width * eh / ew))
    else:
        width = max(1, round(height * ew / eh))
    return grid_and_gsd(extent, width=width, height=height, pixel_budget=pixel_budget, large_area=large_area)


class RectangleMapTool(QgsMapTool):
    """Press, drag, release: emits rectangleDrawn(QgsRectangle) in the canvas CRS.

    The rubber band stays on the map after the drag (and after another tool is chosen) so the user sees the
    area that will be generated; clear() removes it. It is an outline only: a fill, even a faint one, would tint
    the image generated under it (a green result looked brown)."""

    rectangleDrawn = pyqtSignal(QgsRectangle)

    def __init__(self, canvas: QgsMapCanvas):
        super().__init__(canvas)
        self._start: Optional[QgsPointXY] = None
        self.band = QgsRubberBand(canvas, QgsWkbTypes.GeometryType.PolygonGeometry)
        self.band.setColor(QColor(230, 80, 20, 200))
        self.band.setFillColor(QColor(0, 0, 0, 0))
        self.band.setWidth(2)
        self.setCursor(Qt.CursorShape.CrossCursor)

    def show_rectangle(self, rect: Optional[QgsRectangle]) -> None:
        self.band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        if rect is not None and not rect.isEmpty():
            self.band.setToGeometry(QgsGeometry.fromRect(rect), None)

    def clear(self) -> None:
        self._start = None
        self.band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)

    def remove(self) -> None:
        """Take the rubber band off the canvas for good (plugin unload)."""
        self.clear()
        scene = self.canvas().scene()
        if scene is not None:
            scene.removeItem(self.band)

    def canvasPressEvent(self, event) -> None:  # noqa: N802  (Qt override)
        if event.button() == Qt.MouseButton.LeftButton:
            self._start = self.toMapCoordinates(event.pos())
            self.show_rectangle(None)

    def canvasMoveEvent(self, event) -> None:  # noqa: N802
        if self._start is not None:
            self.show_rectangle(QgsRectangle(self._start, self.toMapCoordinates(event.pos())))

    def canvasReleaseEvent(self, event) -> None:  # noqa: N802
        if self._start is None or event.button() != Qt.MouseButton.LeftButton:
            return
        rect = QgsRectangle(self._start, self.toMapCoordinates(event.pos()))
        rect.normalize()
        self._start = None
        if rect.isEmpty():
            self.show_rectangle(None)
            return
        self.show_rectangle(rect)
        self.rectangleDrawn.emit(rect)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Escape:
            self.clear()

