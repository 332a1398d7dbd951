"""Write the generated image as a Cloud Optimized GeoTIFF, atomically, with provenance tags.

Atomic because QGIS (or a batch job's resume logic) may look at the output path at any time: the file is built
under a hidden temporary name in the target folder and renamed into place only when complete, so a reader
sees either the old file or the whole new one, never a partial one. COG because the outputs are meant to be
shared and served; internal overviews also make large outputs quick to display in QGIS.
"""
from __future__ import annotations

import glob
import json
import os
import secrets
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS as RioCRS
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile

from ..errors import OutputError
from .georef import Grid

try:  # GDAL errors that rasterio surfaces as CPLE_* exceptions (disk full, permission denied...)
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - private module layout changed
    CPLE_BaseError = RasterioError

_WRITE_ERRORS = (OSError, RasterioError, CPLE_BaseError)
IO_ERRORS = _WRITE_ERRORS  # what reading a file can raise too

COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",
    "BLOCKSIZE": "512",
    "OVERVIEWS": "AUTO",
    "RESAMPLING": "AVERAGE",  # no ringing in overviews of synthetic imagery
    "BIGTIFF": "IF_SAFER",
    "NUM_THREADS": "1",  # deterministic and polite: the GPU job owns the machine
}


PROBE_PREFIX = ".rsgen-write-test-"  # check_writable's probe files: a process killed mid-probe may leave one


def check_writable(path: str) -> None:
    """Fail early (before minutes of generation) if `path` cannot be written; the message names the folder."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"Cannot write {os.path.basename(path)!r}: {folder} is a file, not a folder.")
    if not os.path.isdir(folder):
        raise OutputError(f"Cannot write {os.path.basename(path)!r}: the folder {folder} does not exist.")
    if os.path.isdir(path):
        raise OutputError(f"Cannot write to {path}: it is a folder; give a file name such as "
                          f"{os.path.join(path, 'synthetic.tif')}.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write to the folder {folder}: permission denied; choose another folder.")
    # os.access says yes to root and knows nothing of read-only mounts: really try to create a file there.
    try:
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise OutputError(f"Cannot write to the folder {folder}: {err.strerror or err}; choose another folder.") \
            from err


def _tag_value(value) -> str:
    """GDAL metadata is text: booleans as true/false, containers as JSON, None as an explicit 'unknown'."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "unknown"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _clean_tags(tags: Dict) -> Dict[str, str]:
    out = {}
    for key, value in (tags or {}).items():
        key = str(key)
        if not key or "=" in key or any(ch.isspace() for ch in key):
            raise ValueError(f"Invalid GeoTIFF tag name {key!r} (no spaces or '=').")
        out[key] = _tag_value(value)
    out["synthetic"] = "true"
    return out


def _check_input(rgb: np.ndarray, grid: Grid) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"write_cog needs a uint8 array of shape (3, H, W), got "
                         f"{getattr(rgb, 'dtype', type(rgb))} {getattr(rgb, 'shape', '')}.")
    if rgb.shape[1:] != (grid.height, grid.width):
        raise ValueError(f"The image is {rgb.shape[2]}x{rgb.shape[1]} pixels but the grid is "
                         f"{grid.width}x{grid.height}.")


def _temp_prefix(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.partial-{secrets.token_hex(6)}")


def _remove_temps(prefix: str) -> None:
    """Remove the temp file and anything GDAL made next to it (e.g. '<temp>.ovr.tmp' while building overviews)."""
    for leftover in glob.glob(glob.escape(prefix) + "*"):
        try:
            os.remove(leftover)
        except OSError:
            pass


def write_cog(path: str, rgb: np.ndarray, grid: Grid, tags: Dict, nodata: Optional[float] = None) -> str:
    """Write `rgb` (uint8, (3, H, W), row 0 = north) on `grid` as a COG at `path`, atomically; return the path.

    The COG driver can only copy, so the pixels go into an in-memory tiled GTiff first (RGB photometric, colour
    interpretation red/green/blue, CRS as WKT, tags), which GDAL then copies to a temp file beside `path` with
    overviews; the temp file is renamed over `path` only when complete. On any failure all temp files are
    removed and an existing file at `path` is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    _check_input(rgb, grid)
    clean = _clean_tags(tags)
    check_writable(path)
    prefix = _temp_prefix(path)
    temp = prefix + ".tif"
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=3, dtype="uint8",
                   crs=RioCRS.from_wkt(grid.crs_wkt), transform=grid.affine(), tiled=True, blockxsize=256,
                   blockysize=256, photometric="RGB", interleave="pixel")
    if nodata is not None:
        profile["nodata"] = nodata
    try:
        with MemoryFile() as mem:
            with mem.open(**profile) as src:
                src.write(rgb)
                src.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
                src.update_tags(**clean)
            with mem.open() as src:
                rasterio.shutil.copy(src, temp, driver="COG", **COG_OPTIONS)
        os.replace(temp, path)
    except _WRITE_ERRORS as err:
        _remove_temps(prefix)
        hint = " If it is open in QGIS or another program, close it there first." if os.path.exists(path) else ""
        raise OutputError(f"Could not write {path} (folder {os.path.dirname(path)}): {err}.{hint}") from err
    except BaseException:
        _remove_temps(prefix)
        raise
    _remove_temps(prefix)  # GDAL cleans up after itself; this is belt and braces
    return path


class CogStream:
    """Write a large image window by window, then turn it into a COG, atomically.

    Pixels go into a tiled, uncompressed GTiff under a hidden temporary name beside `path` (rasterio windowed
    writes: only the window being written is in memory); `commit()` copies it to a COG (overviews built by
    GDAL from the file, with a small block cache so memory does not follow the image size) under a second
    temporary name and renames that over `path`. `abort()` (or leaving the `with` block by an exception,
    cancel included) removes every temporary file: no partial output is ever visible at `path`.
    """

    CACHE_MB = 64

    def __init__(self, path: str, grid: Grid, tags: Dict):
        self.path = os.path.abspath(os.fspath(path))
        self.grid = grid
        self.tags = _clean_tags(tags)
        check_writable(self.path)
        self.prefix = _temp_prefix(self.path)
        self._ds = None
        profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=3, dtype="uint8",
                       crs=RioCRS.from_wkt(grid.crs_wkt), transform=grid.affine(), tiled=True, blockxsize=256,
                       blockysize=256, photometric="RGB", interleave="pixel", BIGTIFF="IF_SAFER")
        try:
            with rasterio.Env(GDAL_CACHEMAX=self.CACHE_MB):
                self._ds = rasterio.open(self.prefix + ".stream.tif", "w", **profile)
        except _WRITE_ERRORS as err:
            self.abort()
            raise OutputError(f"Could not write {self.path} (folder {os.path.dirname(self.path)}): {err}.") \
                from err

    def write(self, rgb: np.ndarray, row_off: int, col_off: int) -> None:
        """Write a (3, h, w) uint8 block at pixel (row_off, col_off) of the grid."""
        from rasterio.windows import Window

        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[0] != 3:
            raise ValueError(f"CogStream.write needs uint8 (3, h, w), got {rgb.dtype} {rgb.shape}")
        try:
            self._ds.write(rgb, window=Window(col_off, row_off, rgb.shape[2], rgb.shape[1]))
        except _WRITE_ERRORS as err:
            self.abort()
            raise OutputError(f"Could not write {self.path} (folder {os.path.dirname(self.path)}): {err}.") \
                from err

    def commit(self) -> str:
        temp = self.prefix + ".tif"
        try:
            self._ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
            self._ds.update_tags(**self.tags)
            self._ds.close()
            self._ds = None
            with rasterio.Env(GDAL_CACHEMAX=self.CACHE_MB), rasterio.open(self.prefix + ".stream.tif") as src:
                rasterio.shutil.copy(src, temp, driver="COG", **COG_OPTIONS)
            os.replace(temp, self.path)
        except _WRITE_ERRORS as err:
            self.abort()
            hint = " If it is open in QGIS or another program, close it there first." \
                if os.path.exists(self.path) else ""
            raise OutputError(f"Could not write {self.path} (folder {os.path.dirname(self.path)}): {err}.{hint}") \
                from err
        except BaseException:
            self.abort()
            raise
        _remove_temps(self.prefix)
        return self.path

    def abort(self) -> None:
        if self._ds is not None:
            try:
                self._ds.close()
            except _WRITE_ERRORS:
                pass
            self._ds = None
        _remove_temps(self.prefix)

    def __enter__(self) -> "CogStream":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._ds is not None:
            self.abort()


def read_tags(path: str) -> Dict[str, str]:
    """The default-domain GDAL metadata of a GeoTIFF (our provenance tags, plus GDAL's own AREA_OR_POINT)."""
    with rasterio.open(path) as src:
        return dict(src.tags())


def is_valid_cog(path: str) -> Tuple[bool, List[str]]:
    """Whether GDAL sees a COG layout, tiles and (for images larger than one block) internal overviews."""
    problems: List[str] = []
    try:
        with rasterio.open(path) as src:
            if src.driver != "GTiff":
                problems.append(f"not a GeoTIFF (driver {src.driver})")
            if src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "").upper() != "COG":
                problems.append("GDAL does not report LAYOUT=COG (no COG header / ordering)")
            bh, bw = src.block_shapes[0]
            if not src.profile.get("tiled", False):
                problems.append(f"not tiled (blocks of {bw}x{bh})")
            if (src.width > bw or src.height > bh) and not src.overviews(1):
                problems.append("no internal overviews although the image is larger than one block")
    except (RasterioError, CPLE_BaseError, OSError) as err:
        problems.append(f"cannot be opened: {err}")
    return (not problems, problems)


__all__ = ["check_writable", "write_cog", "CogStream", "read_tags", "is_valid_cog", "COG_OPTIONS"]
