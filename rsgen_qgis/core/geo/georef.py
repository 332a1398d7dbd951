"""The output pixel grid: extent + CRS + GSD (or size) -> an exact, north-up GDAL geotransform.

Everything that places pixels on the ground goes through `Grid`, so the GeoTIFF writer, the large-area tiler and
the model's metadata (centre lon/lat, GSD in metres) all agree on one grid. The CRS is kept as WKT (not an EPSG
code) so custom CRSs survive the trip into the GeoTIFF and back into QGIS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from . import projdata  # noqa: F401  (must run before pyproj looks for proj.db)
from ..errors import CrsError, ExtentError, PixelBudgetError
from ..request import GenerationRequest

import pyproj  # noqa: E402  (after projdata on purpose)

# How far (degrees) an extent may stray beyond its CRS's area of use: people routinely use one UTM zone for an
# area that spills into the next, which projects fine. Latitude limits near the poles stay hard (see below).
AREA_TOLERANCE_DEG = 5.0
_POLAR_LIMIT_DEG = 84.0
_SNAP_EPS = 1e-9  # relative: an extent that already is a whole multiple of the GSD must not grow by a pixel
_SAMPLES = 21  # points per side sampled when projecting an extent to lon/lat

LARGE_AREA_HINT = ('use a coarser GSD, or the large-area path (`python -m rsgen_qgis batch`, or the dock\'s '
                   '"Large area" option), which generates the area in tiles')


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid. transform is GDAL order (x0, px, 0, y0, 0, -py); (x0, y0) is the top-left corner."""

    crs_wkt: str
    transform: Tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def pixel_size(self) -> Tuple[float, float]:
        return (self.transform[1], -self.transform[5])

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the outer pixel edges, in CRS units."""
        x0, px, _, y0, _, npy = self.transform
        return (x0, y0 + npy * self.height, x0 + px * self.width, y0)

    @property
    def world_offset(self) -> Tuple[int, int]:
        """(col, row) of the top-left pixel in the world grid of this pixel size anchored at (0, 0).

        Tiles of one large area share this world grid, so the offset tells where a tile sits without float drift.
        """
        x0, px, _, y0, _, npy = self.transform
        return (int(round(x0 / px)), int(round(y0 / npy)))

    def window(self, col_off: int, row_off: int, width: int, height: int) -> "Grid":
        """The sub-grid starting at pixel (col_off, row_off); it may extend past this grid (tiles with overlap)."""
        if width < 1 or height < 1:
            raise ValueError(f"A window needs a positive size (got {width}x{height}).")
        x0, px, r, y0, c, npy = self.transform
        return Grid(self.crs_wkt, (x0 + col_off * px, px, r, y0 + row_off * npy, c, npy), int(width), int(height))

    def affine(self):
        """The transform as a rasterio Affine (imported lazily so the grid maths stays light)."""
        from rasterio.transform import Affine

        return Affine.from_gdal(*self.transform)

    def to_dict(self) -> dict:
        return {"crs_wkt": self.crs_wkt, "transform": list(self.transform), "width": self.width,
                "height": self.height}

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        return cls(str(d["crs_wkt"]), tuple(float(v) for v in d["transform"]), int(d["width"]), int(d["height"]))


def parse_crs(user_input: str) -> pyproj.CRS:
    """Read any CRS pyproj understands (EPSG code, WKT, PROJ string); only 2D map CRSs make sense for a raster."""
    shown = str(user_input).strip()
    shown = shown if len(shown) <= 100 else shown[:97] + "..."
    try:
        crs = pyproj.CRS.from_user_input(user_input)
    except Exception as err:  # pyproj.exceptions.CRSError, TypeError for odd types
        raise CrsError(f"Cannot read the CRS {shown!r}: {err}") from err
    if not (crs.is_projected or crs.is_geographic):
        raise CrsError(f"The CRS {crs.name!r} is not a map CRS (projected or geographic); choose one that is.")
    return crs


def crs_to_wkt(crs: pyproj.CRS) -> str:
    """WKT2_2019 keeps custom and EPSG CRSs alike; check it reads back equal so the GeoTIFF gets the same CRS."""
    for version in ("WKT2_2019", "WKT1_GDAL"):
        wkt = crs.to_wkt(version)
        if wkt and pyproj.CRS.from_wkt(wkt) == crs:
            return wkt
    raise CrsError(f"The CRS {crs.name!r} cannot be written as WKT without changing it.")


def _to_lonlat(crs: pyproj.CRS, target: Optional[pyproj.CRS] = None) -> pyproj.Transformer:
    try:
        return pyproj.Transformer.from_crs(crs, target or "EPSG:4326", always_xy=True)
    except Exception as err:
        raise CrsError(f"The CRS {crs.name!r} has no usable transformation to longitude/latitude: {err}") from err


def _sample(extent: Tuple[float, float, float, float], n: int = _SAMPLES) -> Tuple[np.ndarray, np.ndarray]:
    """A regular n x n lattice over the extent, edges included (projections bend edges, corners are not enough)."""
    xs = np.linspace(extent[0], extent[2], n)
    ys = np.linspace(extent[1], extent[3], n)
    gx, gy = np.meshgrid(xs, ys)
    return gx.ravel(), gy.ravel()


def _check_area_of_use(crs: pyproj.CRS, extent: Tuple[float, float, float, float]) -> None:
    """Refuse extents the CRS cannot place on Earth, before a model spends minutes on them."""
    xs, ys = _sample(extent)
    lon, lat = _to_lonlat(crs).transform(xs, ys, errcheck=False)
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    aou = crs.area_of_use
    if aou is not None:
        w, s, e, n = aou.west, aou.south, aou.east, aou.north
    elif crs.is_geographic:
        w, s, e, n = -180.0, -90.0, 180.0, 90.0
    else:
        w = s = e = n = None
    valid = f" Its valid area is longitude {w:g} to {e:g}, latitude {s:g} to {n:g}." if w is not None else ""
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))) or np.any(np.abs(lat) > 90.0 + 1e-9):
        raise ExtentError(f"The extent {_fmt(extent)} lies (partly) outside what the CRS {crs.name!r} can "
                          f"project to longitude/latitude.{valid}")
    if w is None:
        return  # custom CRS without a declared area: projecting finitely is all we can check
    tol = AREA_TOLERANCE_DEG
    # Polar limits (85.06 for Web Mercator, 90 for lon/lat, 84 for northern UTM) are hard, the others get slack.
    s_lim = s if abs(s) >= _POLAR_LIMIT_DEG else s - tol
    n_lim = n if abs(n) >= _POLAR_LIMIT_DEG else n + tol
    lat_ok = lat.max() >= s_lim - 1e-9 and lat.min() <= n_lim + 1e-9
    if w <= e:
        lon_ok = lon.max() >= w - tol and lon.min() <= e + tol
    else:  # the area of use crosses the antimeridian
        lon_ok = bool(np.any((lon >= w - tol) | (lon <= e + tol)))
    if w <= -180.0 and e >= 180.0:
        lon_ok = True  # a whole-world CRS: longitude wraps
    if not (lat_ok and lon_ok):
        raise ExtentError(f"The extent {_fmt(extent)} lies outside the area where the CRS {crs.name!r} is valid "
                          f"(it maps to longitude {lon.min():.4g} to {lon.max():.4g}, latitude {lat.min():.4g} "
                          f"to {lat.max():.4g}).{valid}")


def _fmt(extent: Tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in extent) + ")"


def _snap(lo: float, hi: float, gsd: float) -> Tuple[int, int]:
    """Whole-pixel indices (i0, i1) with i0*gsd <= lo and i1*gsd >= hi; round-off does not add a pixel."""
    q0, q1 = lo / gsd, hi / gsd
    i0 = math.floor(q0 + _SNAP_EPS * max(1.0, abs(q0)))
    i1 = math.ceil(q1 - _SNAP_EPS * max(1.0, abs(q1)))
    return i0, max(i1, i0 + 1)


def grid_for_request(req: GenerationRequest) -> Grid:
    """The grid a request asks for: validated extent and CRS, snapped to whole GSD multiples, within budget."""
    xmin, ymin, xmax, ymax = extent = tuple(float(v) for v in req.extent)
    if not all(math.isfinite(v) for v in extent) or not (xmax > xmin and ymax > ymin):
        raise ExtentError(f"The extent is empty or has zero area: {_fmt(extent)} (xmin, ymin, xmax, ymax).")
    crs = parse_crs(req.crs)
    wkt = crs_to_wkt(crs)
    _check_area_of_use(crs, extent)
    if req.gsd is not None:
        gsd = float(req.gsd)
        c0, c1 = _snap(xmin, xmax, gsd)
        r0, r1 = _snap(ymin, ymax, gsd)
        width, height = c1 - c0, r1 - r0
        transform = (c0 * gsd, gsd, 0.0, r1 * gsd, 0.0, -gsd)
    else:
        width, height = int(req.width), int(req.height)
        transform = (xmin, (xmax - xmin) / width, 0.0, ymax, 0.0, -(ymax - ymin) / height)
    if width * height > req.pixel_budget and not getattr(req, "large_area", False):
        raise PixelBudgetError(
            f"The output would be {width} x {height} = {width * height:,} pixels, more than the budget of "
            f"{req.pixel_budget:,} pixels for one generation; {LARGE_AREA_HINT}.")
    return Grid(wkt, transform, width, height)


def _centre(grid: Grid) -> Tuple[float, float]:
    xmin, ymin, xmax, ymax = grid.bounds
    return ((xmin + xmax) / 2.0, (ymin + ymax) / 2.0)


def centre_lonlat(grid: Grid) -> Tuple[float, float]:
    """(lon, lat) in WGS 84 of the grid's centre: the model is conditioned on where on Earth the image is."""
    crs = parse_crs(grid.crs_wkt)
    lon, lat = _to_lonlat(crs).transform(*_centre(grid), errcheck=True)
    return (float(lon), float(lat))


def gsd_metres(grid: Grid) -> Tuple[float, float]:
    """Ground size (metres) of one pixel at the grid centre, across (x) and along (y), on the CRS's ellipsoid.

    Pixel sizes in CRS units mislead: degrees are not metres, and Web Mercator's '10 m' pixel covers 5 m at 60°N.
    So we measure a pixel's edges as geodesics on the CRS's own ellipsoid (its geodetic CRS, no datum shift).
    """
    crs = parse_crs(grid.crs_wkt)
    geodetic = crs.geodetic_crs
    if geodetic is None:
        raise CrsError(f"The CRS {crs.name!r} has no ellipsoid to measure distances on.")
    to_ll = _to_lonlat(crs, geodetic)
    geod = crs.get_geod()
    cx, cy = _centre(grid)
    px, py = grid.pixel_size
    lons, lats = to_ll.transform([cx - px / 2, cx + px / 2, cx, cx], [cy, cy, cy - py / 2, cy + py / 2],
                                 errcheck=True)
    _, _, gx = geod.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, gy = geod.inv(lons[2], lats[2], lons[3], lats[3])
    return (float(gx), float(gy))


def gsd_metres_mean(grid: Grid) -> float:
    """One GSD figure for the model's metadata: the geometric mean, i.e. the side of a square of equal area."""
    gx, gy = gsd_metres(grid)
    return math.sqrt(gx * gy)


__all__: List[str] = ["Grid", "grid_for_request", "centre_lonlat", "gsd_metres", "gsd_metres_mean", "parse_crs",
                      "crs_to_wkt", "AREA_TOLERANCE_DEG"]
