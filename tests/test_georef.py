"""Grid maths, CRS round trips and ground-size figures, checked against independent ellipsoid formulas."""
import math

import numpy as np
import pytest

import rsgen_qgis.core.geo.projdata  # noqa: F401  (before pyproj)
import pyproj
import rasterio
from rasterio.crs import CRS as RioCRS

from rsgen_qgis.core.errors import CrsError, ExtentError, PixelBudgetError
from rsgen_qgis.core.geo.georef import Grid, centre_lonlat, grid_for_request, gsd_metres, gsd_metres_mean
from rsgen_qgis.core.request import GenerationRequest

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563
WGS84_E2 = WGS84_F * (2 - WGS84_F)
UTM34S = "EPSG:32734"
AEQD = "+proj=aeqd +lat_0=-34 +lon_0=20.4 +datum=WGS84 +units=m"


def req(extent, crs=UTM34S, **kw) -> GenerationRequest:
    kw.setdefault("output", "/tmp/out.tif")
    if "width" not in kw:
        kw.setdefault("gsd", 10.0)
    return GenerationRequest(extent=extent, crs=crs, **kw)


def parallel_m(lat_deg: float, dlon_deg: float) -> float:
    """Length of dlon along a parallel: N(phi) cos(phi) dlambda (prime-vertical radius of curvature)."""
    phi = math.radians(lat_deg)
    n = WGS84_A / math.sqrt(1 - WGS84_E2 * math.sin(phi) ** 2)
    return n * math.cos(phi) * math.radians(dlon_deg)


def meridian_m(lat_deg: float, dlat_deg: float) -> float:
    """Length of dlat along a meridian: M(phi) dphi (meridional radius of curvature)."""
    phi = math.radians(lat_deg)
    m = WGS84_A * (1 - WGS84_E2) / (1 - WGS84_E2 * math.sin(phi) ** 2) ** 1.5
    return m * math.radians(dlat_deg)


# --- snapping and transforms -------------------------------------------------------------------------------

def test_snap_exact_extent_does_not_grow():
    g = grid_for_request(req((345000, 6235000, 346000, 6236000)))
    assert (g.width, g.height) == (100, 100)
    assert g.transform == (345000.0, 10.0, 0.0, 6236000.0, 0.0, -10.0)
    assert g.bounds == (345000.0, 6235000.0, 346000.0, 6236000.0)


def test_snap_exact_with_float_roundoff():
    # 0.3 / 0.1 == 2.9999999999999996 in floats; it still is a whole multiple and must not add a pixel.
    g = grid_for_request(req((0.1, 0.2, 0.7, 0.9), crs="EPSG:4326", gsd=0.1))
    assert (g.width, g.height) == (6, 7)


def test_snap_outward():
    g = grid_for_request(req((345003.5, 6235007.0, 345995.2, 6235991.0)))
    assert g.bounds == (345000.0, 6235000.0, 346000.0, 6236000.0)
    assert (g.width, g.height) == (100, 100)
    # negative coordinates snap outward too (floor/ceil, not truncation)
    g = grid_for_request(req((-0.00015, -0.00025, 0.00015, 0.00025), crs="EPSG:4326", gsd=0.0001))
    x0, px, _, y0, _, npy = g.transform
    assert (g.width, g.height) == (4, 6)
    assert x0 == pytest.approx(-0.0002, abs=1e-15) and y0 == pytest.approx(0.0003, abs=1e-15)


def test_transform_is_exactly_the_snapped_extent():
    gsd = 0.5
    e = (345001.3, 6235002.7, 345101.1, 6235098.2)
    g = grid_for_request(req(e, gsd=gsd))
    assert g.transform == (math.floor(e[0] / gsd) * gsd, gsd, 0.0, math.ceil(e[3] / gsd) * gsd, 0.0, -gsd)
    xmin, ymin, xmax, ymax = g.bounds
    assert xmin <= e[0] and ymin <= e[1] and xmax >= e[2] and ymax >= e[3]
    assert g.width == round((math.ceil(e[2] / gsd) - math.floor(e[0] / gsd)))
    assert g.world_offset == (math.floor(e[0] / gsd), -math.ceil(e[3] / gsd))


def test_width_height_mode_exact():
    e = (345000.0, 6235000.0, 345777.0, 6235333.0)
    g = grid_for_request(req(e, width=300, height=200))
    assert (g.width, g.height) == (300, 200)
    assert g.transform == (e[0], (e[2] - e[0]) / 300, 0.0, e[3], 0.0, -(e[3] - e[1]) / 200)
    assert g.bounds == pytest.approx(e, rel=0, abs=1e-6)


def test_window_and_dict_round_trip():
    g = grid_for_request(req((345000, 6235000, 346000, 6236000)))
    w = g.window(10, 20, 30, 40)
    assert w.transform[0] == 345100.0 and w.transform[3] == 6235800.0 and (w.width, w.height) == (30, 40)
    assert w.world_offset == (g.world_offset[0] + 10, g.world_offset[1] + 20)
    assert Grid.from_dict(g.to_dict()) == g
    assert tuple(g.affine().to_gdal()) == g.transform


# --- CRS round trip through a GeoTIFF ----------------------------------------------------------------------

@pytest.mark.parametrize("crs, extent, gsd", [
    ("EPSG:4326", (20.0, -34.1, 20.1, -34.0), 0.001),
    (UTM34S, (345000, 6235000, 346000, 6236000), 10.0),
    ("EPSG:3857", (2260000, -4040000, 2261000, -4039000), 10.0),
    (AEQD, (-500, -500, 500, 500), 10.0),
])
def test_crs_round_trip_through_geotiff(tmp_path, crs, extent, gsd):
    g = grid_for_request(req(extent, crs=crs, gsd=gsd))
    assert pyproj.CRS.from_wkt(g.crs_wkt) == pyproj.CRS.from_user_input(crs)
    path = str(tmp_path / "rt.tif")
    with rasterio.open(path, "w", driver="GTiff", width=g.width, height=g.height, count=1, dtype="uint8",
                       crs=RioCRS.from_wkt(g.crs_wkt), transform=g.affine()) as dst:
        dst.write(np.zeros((1, g.height, g.width), np.uint8))
    with rasterio.open(path) as src:
        assert pyproj.CRS.from_wkt(src.crs.to_wkt()) == pyproj.CRS.from_user_input(crs)
        assert tuple(src.transform.to_gdal()) == g.transform


# --- metadata for the model ---------------------------------------------------------------------------------

def test_gsd_metres_geographic_equator():
    g = grid_for_request(req((20.0, 0.0, 20.01, 0.01), crs="EPSG:4326", gsd=0.0001))
    gx, gy = gsd_metres(g)
    lat_c = 0.005
    assert gx == pytest.approx(parallel_m(lat_c, 0.0001), rel=1e-3)
    assert gy == pytest.approx(meridian_m(lat_c, 0.0001), rel=1e-3)
    assert gx == pytest.approx(11.132, rel=1e-3) and gy == pytest.approx(11.057, rel=1e-3)


def test_gsd_metres_geographic_60n():
    g = grid_for_request(req((20.0, 59.995, 20.01, 60.005), crs="EPSG:4326", gsd=0.0001))
    gx, gy = gsd_metres(g)
    assert gx == pytest.approx(parallel_m(60.0, 0.0001), rel=1e-3)
    assert gy == pytest.approx(meridian_m(60.0, 0.0001), rel=1e-3)
    assert gx == pytest.approx(5.58, rel=2e-3) and gy == pytest.approx(11.14, rel=2e-3)
    assert gsd_metres_mean(g) == pytest.approx(math.sqrt(gx * gy))


def test_gsd_metres_web_mercator_60n():
    # EPSG:3857: x = a*lon, y = a*ln(tan(pi/4 + lat/2)) with geodetic lat, so dlon = dx/a, dlat = dy*cos(lat)/a.
    y60 = WGS84_A * math.log(math.tan(math.pi / 4 + math.radians(60) / 2))
    g = grid_for_request(req((1000000, y60 - 500, 1001000, y60 + 500), crs="EPSG:3857", gsd=10.0))
    cy = (g.bounds[1] + g.bounds[3]) / 2
    lat_c = math.degrees(2 * math.atan(math.exp(cy / WGS84_A)) - math.pi / 2)
    gx, gy = gsd_metres(g)
    assert gx == pytest.approx(parallel_m(lat_c, math.degrees(10 / WGS84_A)), rel=1e-3)
    assert gy == pytest.approx(meridian_m(lat_c, math.degrees(10 * math.cos(math.radians(lat_c)) / WGS84_A)), rel=1e-3)
    assert gx == pytest.approx(5.0, rel=5e-3) and gy == pytest.approx(5.0, rel=5e-3)


def test_gsd_metres_utm():
    g = grid_for_request(req((495000, 6235000, 505000, 6245000)))  # on the central meridian: k = 0.9996
    gx, gy = gsd_metres(g)
    assert gx == pytest.approx(10 / 0.9996, rel=1e-4) and gy == pytest.approx(10 / 0.9996, rel=1e-4)
    g = grid_for_request(req((345000, 6235000, 346000, 6236000)))  # 155 km west of it
    gx, gy = gsd_metres(g)
    assert gx == pytest.approx(10.0, rel=1e-3) and gy == pytest.approx(10.0, rel=1e-3)
    lon, lat = centre_lonlat(g)
    k = pyproj.Proj(UTM34S).get_factors(lon, lat).parallel_scale  # independent: PROJ's analytic scale factor
    assert gx == pytest.approx(10 / k, rel=1e-5)


def test_centre_lonlat_utm34s():
    g = grid_for_request(req((345000, 6235000, 346000, 6236000)))
    lon, lat = centre_lonlat(g)
    # Independent path: PROJ's inverse projection (Proj, not Transformer) at the centre of the extent.
    plon, plat = pyproj.Proj(UTM34S)(345500.0, 6235500.0, inverse=True)
    assert (lon, lat) == pytest.approx((plon, plat), abs=1e-9)
    # Rough sanity from geometry: 155 km west of 21°E at 34°S is ~1.68° of longitude.
    assert lon == pytest.approx(21 - 155.0 / (111.32 * math.cos(math.radians(34))), abs=0.02)
    assert lat == pytest.approx(-34.01, abs=0.01)


# --- errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extent", [(0, 0, 0, 10), (0, 0, 10, 0), (10, 0, 0, 10), (float("nan"), 0, 1, 1),
                                    (0, 0, float("inf"), 1)])
def test_empty_or_invalid_extent(extent):
    with pytest.raises(ExtentError, match="empty or has zero area"):
        grid_for_request(req(extent, crs="EPSG:4326", gsd=0.1))


@pytest.mark.parametrize("crs, extent", [
    ("EPSG:3857", (0, 20050000, 1000, 20051000)),
    ("EPSG:3857", (0, -20060000, 1000, -20050000)),
    ("EPSG:4326", (20, 90.5, 21, 91)),
    ("EPSG:4326", (20, -95, 21, -91)),
    (UTM34S, (-5000000, 6235000, -4999000, 6236000)),
    (UTM34S, (345000, 2.0e7, 346000, 2.0001e7)),
])
def test_outside_area_of_use(crs, extent):
    with pytest.raises(ExtentError, match=r"latitude"):
        grid_for_request(req(extent, crs=crs, gsd=10.0 if crs != "EPSG:4326" else 0.01))


def test_utm_extent_a_few_degrees_beyond_zone_is_fine():
    # ~25.5°E in zone 34 (18-24°E): common practice, projects fine.
    g = grid_for_request(req((920000, 6235000, 921000, 6236000)))
    assert 25.0 < centre_lonlat(g)[0] < 26.0


def test_pixel_budget():
    with pytest.raises(PixelBudgetError) as exc:
        grid_for_request(req((300000, 6200000, 320000, 6220000)))
    msg = str(exc.value)
    assert "2000 x 2000" in msg and "1,048,576" in msg and "batch" in msg and "Large area" in msg
    g = grid_for_request(req((300000, 6200000, 320000, 6220000), pixel_budget=4_000_000))
    assert g.width * g.height == 4_000_000


@pytest.mark.parametrize("crs", ["EPSG:999999", "not a crs", "+proj=nonsense +foo"])
def test_unparseable_crs(crs):
    with pytest.raises(CrsError, match="Cannot read the CRS"):
        grid_for_request(req((0, 0, 1, 1), crs=crs, gsd=0.1))
