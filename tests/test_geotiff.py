"""COG writing: round trip, COG validity, atomicity on failure, early folder checks, determinism."""
import glob
import os
import struct

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp

import rsgen_qgis.core.geo.projdata  # noqa: F401  (before pyproj)
import pyproj

from rsgen_qgis.core.errors import OutputError
from rsgen_qgis.core.geo.geotiff import check_writable, is_valid_cog, read_tags, write_cog
from rsgen_qgis.core.geo.georef import grid_for_request
from rsgen_qgis.core.request import GenerationRequest

AEQD = "+proj=aeqd +lat_0=-34 +lon_0=20.4 +datum=WGS84 +units=m"


def make_grid(n=64, m=None, crs="EPSG:32734", x0=345000.0, y0=6235000.0, gsd=10.0):
    m = m or n
    req = GenerationRequest(extent=(x0, y0, x0 + n * gsd, y0 + m * gsd), crs=crs, gsd=gsd, output="/tmp/x.tif")
    return grid_for_request(req)


def make_rgb(grid, seed=0):
    rng = np.random.default_rng(seed)
    # smooth-ish content plus noise, so compression and overviews have something real to do
    yy, xx = np.mgrid[0:grid.height, 0:grid.width]
    base = np.stack([(xx * 3) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256]).astype(np.int32)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def leftovers(folder):
    return sorted(glob.glob(os.path.join(str(folder), ".*partial*")) + glob.glob(os.path.join(str(folder), "*.tmp")))


def tiff_photometric(path):
    """Read TIFF tag 262 (PhotometricInterpretation) of the first IFD, independently of GDAL (2 = RGB)."""
    with open(path, "rb") as f:
        data = f.read()
    end = "<" if data[:2] == b"II" else ">"
    version = struct.unpack(end + "H", data[2:4])[0]
    if version == 42:
        ifd = struct.unpack(end + "I", data[4:8])[0]
        count = struct.unpack(end + "H", data[ifd:ifd + 2])[0]
        for i in range(count):
            tag, typ, _, val = struct.unpack(end + "HHIH", data[ifd + 2 + 12 * i: ifd + 2 + 12 * i + 10])
            if tag == 262:
                return val
    else:  # BigTIFF
        ifd = struct.unpack(end + "Q", data[8:16])[0]
        count = struct.unpack(end + "Q", data[ifd:ifd + 8])[0]
        for i in range(count):
            tag, typ, _, val = struct.unpack(end + "HHQH", data[ifd + 8 + 20 * i: ifd + 8 + 20 * i + 14])
            if tag == 262:
                return val
    return None


@pytest.mark.parametrize("crs", ["EPSG:32734", AEQD])
def test_round_trip(tmp_path, crs):
    grid = make_grid(70, 50, crs=crs, x0=-350.0 if crs == AEQD else 345000.0, y0=-250.0 if crs == AEQD else 6235000.0)
    rgb = make_rgb(grid)
    tags = {"prompt": "farmland, dry season", "seed": 42, "steps": 20, "guidance": 3.5, "date": None,
            "conditions": {"layout": "50x70"}, "synthetic": False}
    path = str(tmp_path / "out.tif")
    assert write_cog(path, rgb, grid, tags) == path
    with rasterio.open(path) as src:
        assert (src.width, src.height, src.count) == (70, 50, 3)
        assert np.array_equal(src.read(), rgb)
        assert tuple(src.transform.to_gdal()) == grid.transform
        assert pyproj.CRS.from_wkt(src.crs.to_wkt()) == pyproj.CRS.from_user_input(crs)
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert src.nodata is None
    assert tiff_photometric(path) == 2  # RGB
    got = read_tags(path)
    assert got["prompt"] == "farmland, dry season" and got["seed"] == "42" and got["guidance"] == "3.5"
    assert got["date"] == "unknown" and got["conditions"] == '{"layout": "50x70"}'
    assert got["synthetic"] == "true"  # always, whatever the caller passed
    assert not os.path.exists(path + ".aux.xml")
    assert leftovers(tmp_path) == []


def test_nodata(tmp_path):
    grid = make_grid(32)
    path = write_cog(str(tmp_path / "nd.tif"), make_rgb(grid), grid, {}, nodata=0)
    with rasterio.open(path) as src:
        assert src.nodata == 0


def test_valid_cog_with_overviews(tmp_path):
    grid = make_grid(600)
    path = write_cog(str(tmp_path / "big.tif"), make_rgb(grid), grid, {"prompt": "x"})
    ok, problems = is_valid_cog(path)
    assert ok, problems
    with rasterio.open(path) as src:
        assert src.overviews(1) and src.profile["tiled"]
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


def test_small_image_is_valid_cog_without_overviews(tmp_path):
    grid = make_grid(100)
    path = write_cog(str(tmp_path / "small.tif"), make_rgb(grid), grid, {})
    assert is_valid_cog(path) == (True, [])


def test_plain_striped_tiff_is_not_a_cog(tmp_path):
    path = str(tmp_path / "plain.tif")
    grid = make_grid(600)
    with rasterio.open(path, "w", driver="GTiff", width=600, height=600, count=3, dtype="uint8",
                       crs=grid.crs_wkt, transform=grid.affine()) as dst:
        dst.write(make_rgb(grid))
    ok, problems = is_valid_cog(path)
    assert not ok and any("LAYOUT=COG" in p for p in problems) and any("overview" in p for p in problems)
    assert is_valid_cog(str(tmp_path / "missing.tif"))[0] is False


def _failing_copy(exc):
    real = rasterio.shutil.copy

    def copy(src, dst, **kw):
        real(src, dst, **kw)  # the temp file now exists in full; then fail "midway" before the rename
        with open(str(dst) + ".ovr.tmp", "wb") as f:  # and a GDAL-style side file
            f.write(b"junk")
        raise exc
    return copy


@pytest.mark.parametrize("exc, expected", [(OSError(28, "No space left on device"), OutputError),
                                           (RuntimeError("boom"), RuntimeError)])
def test_atomic_on_failure_no_file(tmp_path, monkeypatch, exc, expected):
    grid = make_grid(64)
    monkeypatch.setattr(rasterio.shutil, "copy", _failing_copy(exc))
    path = tmp_path / "out.tif"
    with pytest.raises(expected):
        write_cog(str(path), make_rgb(grid), grid, {"prompt": "p"})
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_atomic_on_failure_keeps_existing_file(tmp_path, monkeypatch):
    grid = make_grid(64)
    path = tmp_path / "out.tif"
    write_cog(str(path), make_rgb(grid, seed=1), grid, {"prompt": "old"})
    before = path.read_bytes()
    monkeypatch.setattr(rasterio.shutil, "copy", _failing_copy(OSError(28, "No space left on device")))
    with pytest.raises(OutputError, match="No space left"):
        write_cog(str(path), make_rgb(grid, seed=2), grid, {"prompt": "new"})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.tif"]


def test_overwrite_replaces(tmp_path):
    grid = make_grid(64)
    path = str(tmp_path / "out.tif")
    write_cog(path, make_rgb(grid, seed=1), grid, {"prompt": "old"})
    write_cog(path, make_rgb(grid, seed=2), grid, {"prompt": "new"})
    assert read_tags(path)["prompt"] == "new"
    assert os.listdir(tmp_path) == ["out.tif"]


def test_bad_input_raises_before_writing(tmp_path):
    grid = make_grid(64)
    path = tmp_path / "out.tif"
    with pytest.raises(ValueError, match="grid is 64x64"):
        write_cog(str(path), np.zeros((3, 10, 10), np.uint8), grid, {})
    with pytest.raises(ValueError, match="uint8"):
        write_cog(str(path), np.zeros((3, 64, 64), np.float32), grid, {})
    with pytest.raises(ValueError, match="tag name"):
        write_cog(str(path), make_rgb(grid), grid, {"bad key": 1})
    assert os.listdir(tmp_path) == []


def test_check_writable_ok(tmp_path):
    check_writable(str(tmp_path / "new.tif"))
    assert os.listdir(tmp_path) == []  # the probe file is gone


def test_check_writable_missing_folder(tmp_path):
    folder = tmp_path / "nope" / "deeper"
    with pytest.raises(OutputError, match="does not exist") as exc:
        check_writable(str(folder / "out.tif"))
    assert str(folder) in str(exc.value)


def test_check_writable_under_a_regular_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    for target in (f / "out.tif", f / "sub" / "out.tif"):
        with pytest.raises(OutputError) as exc:
            check_writable(str(target))
        assert str(target.parent) in str(exc.value)


def test_check_writable_path_is_a_folder(tmp_path):
    (tmp_path / "out.tif").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(str(tmp_path / "out.tif"))
    grid = make_grid(16)
    with pytest.raises(OutputError):
        write_cog(str(tmp_path / "out.tif"), make_rgb(grid), grid, {})


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: permission bits do not stop root (the under-a-file case covers it)")
def test_check_writable_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="Cannot write to the folder") as exc:
            check_writable(str(ro / "out.tif"))
        assert str(ro) in str(exc.value)
    finally:
        ro.chmod(0o755)


def test_deterministic_pixels(tmp_path):
    grid = make_grid(600)
    rgb = make_rgb(grid)
    a = write_cog(str(tmp_path / "a.tif"), rgb, grid, {"seed": 1})
    b = write_cog(str(tmp_path / "b.tif"), rgb.copy(), grid, {"seed": 1})
    with rasterio.open(a) as sa, rasterio.open(b) as sb:
        assert np.array_equal(sa.read(), sb.read())
        assert np.array_equal(sa.read(1, out_shape=(300, 300)), sb.read(1, out_shape=(300, 300)))  # overviews too
