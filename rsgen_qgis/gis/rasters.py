"""Raster layers as conditions: the source image (inpainting, variation), the low-res guide (super-resolution),
the inpainting mask from polygons, and the grids these work on.

Inpainting and variation work on the raster's own grid and CRS (the output must overlay the input pixel for
pixel); super-resolution keeps the footprint and divides the pixel size by 4. The dock works on a window of the
raster (window_grid: the chosen extent snapped to the raster's pixels; mask_window: inpainting only around the
polygons) and reads only that window, so a raster of any size can be worked on. The model wants 8-bit RGB, so
other rasters are converted here, and every conversion is reported as a note the user sees:
single band -> grey RGB (or its colour table), 16-bit/float -> 2-98 percentile stretch per band (what QGIS's
default rendering shows), more than 3 bands -> the bands marked red/green/blue, else the first three.
Nodata (the band's nodata value, NaN, +-inf) stays nodata: read_rgb_nodata() says where, output_nodata() carries
it to the output grid (the engine writes it as the GeoTIFF's mask), and a raster without one valid pixel is
refused with that reason instead of becoming a black image.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCsException, QgsMapLayer,
                       QgsProject, QgsRaster, QgsRasterLayer, QgsRectangle, QgsVectorLayer, QgsWkbTypes)

from ..core.geo import projdata  # noqa: F401  (before pyproj)
from ..core.errors import ConditionError, CrsError
from ..core.geo.georef import Grid, crs_to_wkt, parse_crs
from ..core.request import GenerationRequest
from . import tr
from .rasterize import burn, grid_geometries, new_counts

import pyproj  # noqa: E402

SR_FACTOR = 4
# Qgis.DataType -> numpy (raw data types only; ARGB types are rendered images, not data)
_DTYPES = {1: np.uint8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32, 7: np.float64}
_TYPE_NAMES = {1: "Byte", 2: "UInt16", 3: "Int16", 4: "UInt32", 5: "Int32", 6: "Float32", 7: "Float64"}
RGB_INTERPRETATION = (QgsRaster.ColorInterpretation.RedBand, QgsRaster.ColorInterpretation.GreenBand,
                      QgsRaster.ColorInterpretation.BlueBand)


def _code(value) -> int:
    """A QGIS enum value as its number: an int on QGIS 3 (sip), an IntEnum on QGIS 4 (PyQt6)."""
    return int(getattr(value, "value", value))


def _check_raster(layer: Optional[QgsMapLayer]) -> QgsRasterLayer:
    if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        raise ConditionError("Choose a valid raster layer as the source image.")
    if layer.width() < 1 or layer.height() < 1:
        raise ConditionError(f"Raster {layer.name()!r} has no pixels.")
    return layer


def check_invertible(crs_wkt: str, extent: Tuple[float, float, float, float], name: str) -> None:
    """The model is told where on Earth the image is, so the raster's CRS must convert back to lon/lat.

    Some projections (Bacon, Airy, Van der Grinten II...) are forward-only in PROJ: refuse them here, by name,
    before any work, rather than failing deep inside the engine."""
    crs = parse_crs(crs_wkt)
    xs = [extent[0], extent[2], (extent[0] + extent[2]) / 2, extent[0], extent[2]]
    ys = [extent[1], extent[3], (extent[1] + extent[3]) / 2, extent[3], extent[1]]
    try:
        lon, lat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys, errcheck=False)
        ok = all(math.isfinite(v) for v in list(lon) + list(lat))
    except Exception:  # pyproj raises ProjError (no inverse) or CRSError
        ok = False
    if not ok:
        raise CrsError(f"Raster {name!r} is in a CRS ({crs.name}) that cannot be converted back to longitude/"
                       "latitude (its projection has no inverse, or the raster lies outside it); the model needs "
                       "to know where the image is. Reproject the raster first (Raster > Projections > Warp), "
                       "for example to its UTM zone.")


def raster_grid(layer: QgsRasterLayer) -> Grid:
    """The layer's own pixel grid (extent, size, CRS as WKT): outputs on it overlay the input pixel for pixel."""
    layer = _check_raster(layer)
    crs = layer.crs()
    if not crs.isValid():
        raise CrsError(f"Raster {layer.name()!r} has no CRS; set it in the layer's properties (Source > CRS).")
    wkt = crs_to_wkt(parse_crs(crs.toWkt(QgsCoordinateReferenceSystem.WktVariant.WKT2_2019)))
    r = layer.extent()
    w, h = layer.width(), layer.height()
    extent = (r.xMinimum(), r.yMinimum(), r.xMaximum(), r.yMaximum())
    check_invertible(wkt, extent, layer.name())
    return Grid(wkt, (r.xMinimum(), r.width() / w, 0.0, r.yMaximum(), 0.0, -r.height() / h), w, h)


def _own_grid(layer: QgsRasterLayer) -> Grid:
    """The layer's whole pixel grid without the CRS checks (for reading pixels)."""
    r = layer.extent()
    w, h = layer.width(), layer.height()
    return Grid("", (r.xMinimum(), r.width() / w, 0.0, r.yMaximum(), 0.0, -r.height() / h), w, h)


def window_grid(layer: QgsRasterLayer, bounds: Tuple[float, float, float, float],
                crs: QgsCoordinateReferenceSystem, project: Optional[QgsProject] = None) -> Grid:
    """The part of the layer's own pixel grid that covers `bounds` (in `crs`, e.g. the map's): snapped outwards to
    whole raster pixels and clipped to the raster, so the result overlays the raster pixel for pixel."""
    full = raster_grid(layer)
    rect = QgsRectangle(*bounds)
    if crs.isValid() and crs != layer.crs():
        try:
            rect = QgsCoordinateTransform(crs, layer.crs(), project or QgsProject.instance()).transformBoundingBox(rect)
        except QgsCsException as exc:
            raise CrsError(tr("The extent cannot be projected to the CRS of raster {name!r}: {err}").format(
                name=layer.name(), err=exc)) from exc
    x0, px, _, y0, _, npy = full.transform
    eps = 1e-6
    c0 = max(0, math.floor((rect.xMinimum() - x0) / px + eps))
    c1 = min(full.width, math.ceil((rect.xMaximum() - x0) / px - eps))
    r0 = max(0, math.floor((y0 - rect.yMaximum()) / -npy + eps))
    r1 = min(full.height, math.ceil((y0 - rect.yMinimum()) / -npy - eps))
    if c1 <= c0 or r1 <= r0:
        raise ConditionError(tr("The extent does not overlap raster {name!r}: pan the map to it, draw a rectangle "
                                "on it, or choose Extent > Layer extent with the raster.").format(name=layer.name()))
    return full.window(c0, r0, c1 - c0, r1 - r0)


def mask_window(mask: np.ndarray, budget: int, margin: int = 64, least: int = 8) -> Tuple[int, int, int, int]:
    """(row, col, height, width) of the mask's pixels plus a margin of context around them: `margin` pixels, less
    (down to `least`) where that keeps the window within `budget` pixels; clipped to the mask's array."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    H, W = mask.shape
    if rows.size == 0:
        return 0, 0, H, W
    for m in range(margin, least - 1, -1):
        r0, r1 = max(0, rows[0] - m), min(H, rows[-1] + 1 + m)
        c0, c1 = max(0, cols[0] - m), min(W, cols[-1] + 1 + m)
        if (r1 - r0) * (c1 - c0) <= budget:
            break
    return int(r0), int(c0), int(r1 - r0), int(c1 - c0)


def sr_grid(grid: Grid, factor: int = SR_FACTOR) -> Grid:
    """Same footprint, `factor` times finer pixels (a 10 m 64x64 raster -> 2.5 m 256x256)."""
    x0, px, _, y0, _, npy = grid.transform
    return Grid(grid.crs_wkt, (x0, px / factor, 0.0, y0, 0.0, npy / factor), grid.width * factor,
                grid.height * factor)


def request_on_grid(grid: Grid, output: str, **params: Any) -> GenerationRequest:
    """A request whose grid is exactly `grid` (extent + width/height, not a GSD that would re-snap it)."""
    return GenerationRequest(extent=grid.bounds, crs=grid.crs_wkt, output=output, width=grid.width,
                             height=grid.height, **params)


def _read_band(layer: QgsRasterLayer, band: int, window: Grid) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(values, valid mask or None) of one band in `window` (whole raster pixels) at full resolution, through the
    provider (any raster source): only that window is read."""
    p = layer.dataProvider()
    block = p.block(band, QgsRectangle(*window.bounds), window.width, window.height)
    dtype = _DTYPES.get(_code(block.dataType()))
    if dtype is None or not block.isValid():
        raise ConditionError(f"Band {band} of raster {layer.name()!r} has a data type the plugin cannot read "
                             f"({block.dataType()}); convert it to Byte, UInt16 or Float32 first.")
    a = np.frombuffer(bytes(block.data()), dtype=dtype).reshape(window.height, window.width)
    valid = None
    if p.sourceHasNoDataValue(band) and p.useSourceNoDataValue(band):
        nd = p.sourceNoDataValue(band)
        valid = ~np.isnan(a) if (isinstance(nd, float) and math.isnan(nd)) else (a != nd)
    if np.issubdtype(a.dtype, np.floating):
        valid = np.isfinite(a) if valid is None else (valid & np.isfinite(a))
    return a, valid


def _stretch(a: np.ndarray, valid: Optional[np.ndarray]) -> np.ndarray:
    """2-98 percentile stretch to 0..255; nodata -> 0; a flat band -> 0."""
    v = a[valid] if valid is not None else a.ravel()
    if v.size == 0:
        return np.zeros(a.shape, np.uint8)
    lo, hi = np.percentile(v.astype(np.float64), [2, 98])
    out = np.zeros(a.shape, np.float64) if hi <= lo else (a.astype(np.float64) - lo) / (hi - lo) * 255.0
    out = np.clip(np.nan_to_num(out), 0, 255)
    if valid is not None:
        out[~valid] = 0
    return np.round(out).astype(np.uint8)


def _palette_rgb(layer: QgsRasterLayer, a: np.ndarray) -> Optional[np.ndarray]:
    items = layer.dataProvider().colorTable(1)
    if not items or not np.issubdtype(a.dtype, np.integer):
        return None
    lut = np.zeros((max(int(a.max()), max(int(i.value) for i in items)) + 1, 3), np.uint8)
    for item in items:
        c = item.color
        lut[int(item.value)] = (c.red(), c.green(), c.blue())
    return lut[a.clip(0)].transpose(2, 0, 1)


def read_rgb(layer: QgsRasterLayer, window: Optional[Grid] = None) -> Tuple[np.ndarray, List[str]]:
    """(3, H, W) uint8 RGB of `window` (whole pixels of the layer's own grid; default the whole layer), and notes on
    every conversion made (a stretch of a 16-bit or float raster is computed on the window)."""
    rgb, _, notes = read_rgb_nodata(layer, window)
    return rgb, notes


def output_nodata(nodata: Optional[np.ndarray], mask: Optional[np.ndarray] = None,
                  factor: int = 1) -> Optional[np.ndarray]:
    """Where the output stays nodata: the source's nodata pixels, less those an inpainting mask regenerates,
    repeated `factor` times (super-resolution's finer grid); None when there is none."""
    if nodata is None:
        return None
    out = nodata & ~mask if mask is not None else nodata
    if factor > 1:
        out = np.repeat(np.repeat(out, factor, 0), factor, 1)
    return out if out.any() else None


def read_rgb_nodata(layer: QgsRasterLayer, window: Optional[Grid] = None
                    ) -> Tuple[np.ndarray, Optional[np.ndarray], List[str]]:
    """read_rgb, plus (H, W) bool True where the source has no data (None when it has data everywhere); a raster
    (window) without a single valid pixel is refused."""
    rgb, valid, notes = _read_rgb(layer, window)
    if valid is None or valid.all():
        return rgb, None, notes
    if not valid.any():
        raise ConditionError(f"Raster {layer.name()!r} has no valid pixel here: every pixel is nodata or not a finite "
                             "number (NaN, infinity); there is nothing to work from. Check its nodata value, or "
                             "choose another raster or extent.")
    notes.append(f"Raster {layer.name()!r} has {int((~valid).sum())} nodata pixels: they stay nodata "
                 "(transparent) in the output.")
    return rgb, ~valid, notes


def _read_rgb(layer: QgsRasterLayer, window: Optional[Grid] = None
              ) -> Tuple[np.ndarray, Optional[np.ndarray], List[str]]:
    """(rgb, valid (H, W) bool or None, notes) of the bands read_rgb uses, on `window`."""
    layer = _check_raster(layer)
    window = window or _own_grid(layer)
    p = layer.dataProvider()
    n = p.bandCount()
    name = layer.name()
    notes: List[str] = []
    interp = {p.colorInterpretation(b): b for b in range(1, n + 1)}
    if n == 1:
        a, valid = _read_band(layer, 1, window)
        if p.colorInterpretation(1) == QgsRaster.ColorInterpretation.PaletteIndex:
            rgb = _palette_rgb(layer, a)
            if rgb is not None:
                notes.append(f"Raster {name!r} is paletted: its colour table gave the RGB image.")
                return np.ascontiguousarray(rgb), valid, notes
        bands = [1, 1, 1]
        notes.append(f"Raster {name!r} has a single band: it was used as a grey image (same value in R, G, B).")
    elif n == 2:
        bands = [1, 1, 1]
        notes.append(f"Raster {name!r} has 2 bands: band 1 was used as a grey image.")
    elif all(k in interp for k in RGB_INTERPRETATION):
        bands = [interp[k] for k in RGB_INTERPRETATION]
        if n > 3 and bands != [1, 2, 3]:
            notes.append(f"Raster {name!r} has {n} bands: bands {bands} (marked red, green, blue) were used.")
    else:
        bands = [1, 2, 3]
        if n > 3:
            notes.append(f"Raster {name!r} has {n} bands: the first three were used as red, green, blue.")
    out = np.zeros((3, window.height, window.width), np.uint8)
    cache: Dict[int, np.ndarray] = {}
    stretched = False
    all_valid: Optional[np.ndarray] = None
    for i, b in enumerate(bands):
        if b not in cache:
            a, valid = _read_band(layer, b, window)
            if valid is not None:
                all_valid = valid if all_valid is None else (all_valid & valid)
            if a.dtype == np.uint8:
                cache[b] = np.where(valid, a, 0).astype(np.uint8) if valid is not None else a
            else:
                cache[b], stretched = _stretch(a, valid), True
        out[i] = cache[b]
    if stretched:
        type_name = _TYPE_NAMES.get(_code(p.dataType(bands[0])), "?")
        notes.append(f"Raster {name!r} is not 8-bit ({type_name}): each band was "
                     "stretched from its 2nd to 98th percentile to 0-255, as QGIS displays it.")
    return out, all_valid, notes


def mask_from_polygons(layer: Optional[QgsMapLayer], grid: Grid, selected_only: bool = False,
                       target: str = "the raster", project: Optional[QgsProject] = None,
                       counts: Optional[Dict[str, int]] = None, grow_m: float = 0.0) -> np.ndarray:
    """(H, W) bool on `grid`, True where a pixel's centre is inside a (reprojected, repaired) polygon, grown by
    grow_m metres on the ground (core.conditions.masks.grow: pixel sizes measured in metres, so any CRS works)."""
    if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise ConditionError("Choose a valid polygon layer as the inpainting mask.")
    if layer.geometryType() != QgsWkbTypes.GeometryType.PolygonGeometry:
        raise ConditionError(f"The mask layer {layer.name()!r} must hold polygons (it holds "
                             f"{QgsWkbTypes.geometryDisplayString(layer.geometryType()).lower()}s).")
    if layer.featureCount() == 0:
        raise ConditionError(f"The mask layer {layer.name()!r} is empty; draw the areas to regenerate first.")
    if selected_only and layer.selectedFeatureCount() == 0:
        raise ConditionError(f"No feature of the mask layer {layer.name()!r} is selected; select the polygons to "
                             "regenerate, or use all features.")
    counts = new_counts() if counts is None else counts
    shapes = [(g, 1) for _, kind, g in grid_geometries(layer, grid, counts, clip_margin=max(grid.pixel_size),
                                                       selected_only=selected_only, project=project)
              if kind == "polygon"]
    mask = burn(grid, shapes).astype(bool)
    if not mask.any():
        which = "selected features" if selected_only else "polygons"
        raise ConditionError(f"The {which} of the mask layer {layer.name()!r} do not overlap {target} (no pixel "
                             "centre lies inside them); draw the mask over the image, or check the layers' CRSs.")
    if grow_m > 0:
        from ..core.geo.georef import gsd_metres
        from ..core.conditions.masks import grow

        gx, gy = gsd_metres(grid)
        mask = grow(mask, grow_m / gx, grow_m / gy)
    return mask
