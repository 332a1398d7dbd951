"""DiffusionSat's metadata vector: what its UNet's `metadata` input expects, and how we fill it from the grid.

DiffusionSat (Khanna et al., ICLR 2024) conditions on 7 numbers, each fed like a diffusion timestep (through the
UNet's sinusoidal projection, then its own MLP), so each is scaled to about 0..1000:

    [lon + 180, lat + 90, GSD, cloud / 100, year - 1980, month, day]
  * [1000/360,  1000/180, 1000, 1000,       1000/120,    1000/12, 1000/31]

lon/lat in degrees (WGS 84) of the image centre, GSD in metres per pixel, cloud cover in percent, the
acquisition date's year, month (1-12) and day of month (1-31). The manifest records these shifts and scales
(`conditions.metadata`), so a package says exactly what it was given. The vector has no "unknown" flag: the
date is the request's, else the manifest's default date if the exporter set one (`--date`), else the request
is refused; cloud cover takes the manifest's stated default. A default used is reported as a warning, never
a silent 0.
"""
from __future__ import annotations

import datetime as _dt
import math
from typing import List, Optional

import numpy as np

from ..errors import ConditionError

ENCODING = "diffusionsat_md7"
FIELDS = ("lon", "lat", "gsd", "cloud", "year", "month", "day")
SHIFTS = (180.0, 90.0, 0.0, 0.0, -1980.0, 0.0, 0.0)      # added before scaling
DIVIDE = (1.0, 1.0, 1.0, 100.0, 1.0, 1.0, 1.0)            # cloud percent -> fraction
SCALES = (1000 / 360, 1000 / 180, 1000.0, 1000.0, 1000 / 120, 1000 / 12, 1000 / 31)


def manifest_block(defaults: Optional[dict] = None) -> dict:
    """The `conditions.metadata` block written by export-diffusers."""
    defaults = dict(defaults or {})
    if defaults.get("date") is not None:
        encode(0.0, 0.0, 1.0, 0.0, defaults["date"])  # refuses a date that is not yyyy-mm-dd
    return {"encoding": ENCODING, "fields": list(FIELDS), "shift": list(SHIFTS), "divide": list(DIVIDE),
            "scale": list(SCALES), "units": {"lon": "degree", "lat": "degree", "gsd": "m", "cloud": "percent"},
            "defaults": {"cloud": 0.0, **defaults}}


def encode(lon: float, lat: float, gsd_m: float, cloud_percent: float, date: str) -> np.ndarray:
    """float32 [7] as DiffusionSat's UNet takes it."""
    if not -180.0 <= lon <= 180.0 or not -90.0 <= lat <= 90.0:
        raise ConditionError(f"Longitude/latitude {lon}, {lat} are outside -180..180 / -90..90.")
    if not (gsd_m > 0 and math.isfinite(gsd_m)):
        raise ConditionError(f"GSD must be a positive number of metres (got {gsd_m!r}).")
    if not 0.0 <= cloud_percent <= 100.0:
        raise ConditionError(f"Cloud cover must be 0..100 percent (got {cloud_percent!r}).")
    try:
        d = _dt.date.fromisoformat(str(date))
    except ValueError as exc:
        raise ConditionError(f"The date {date!r} is not an ISO date (yyyy-mm-dd).") from exc
    raw = (lon, lat, gsd_m, cloud_percent, d.year, d.month, d.day)
    return np.array([(v / dv + sh) * sc for v, sh, dv, sc in zip(raw, SHIFTS, DIVIDE, SCALES)], np.float32)


def from_manifest(block: dict, lon: float, lat: float, gsd_m: float, date: Optional[str],
                  warnings: List[str]) -> np.ndarray:
    """The vector for a request, with the manifest's own shifts/scales (checked against this encoding)."""
    if block.get("encoding") != ENCODING or list(block.get("fields", [])) != list(FIELDS):
        raise ConditionError(f"Unknown metadata encoding {block.get('encoding')!r} in the model's manifest.")
    if date is None:
        date = block.get("defaults", {}).get("date")
        if date is None:
            raise ConditionError("This model is conditioned on the acquisition date; give a date (yyyy-mm-dd).")
        warnings.append(f"No date in the request; sent {date}, the default date in the model's manifest.")
    cloud = float(block.get("defaults", {}).get("cloud", 0.0))
    warnings.append(f"Cloud cover is not part of the request; sent {cloud:g}% as the model's manifest states.")
    raw = (lon, lat, gsd_m, cloud)
    v = encode(lon, lat, gsd_m, cloud, date)
    shifts, divide, scales = block["shift"], block["divide"], block["scale"]
    if list(shifts) != list(SHIFTS) or list(divide) != list(DIVIDE) or not np.allclose(scales, SCALES):
        d = _dt.date.fromisoformat(date)
        raw = raw + (d.year, d.month, d.day)
        v = np.array([(r / dv + sh) * sc for r, sh, dv, sc in zip(raw, shifts, divide, scales)], np.float32)
    return v
