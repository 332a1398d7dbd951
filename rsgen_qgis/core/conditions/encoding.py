"""Condition encoding shared by training and run time: one source of truth for the model's inputs.

The denoiser takes two condition tensors beside the noisy image:
- `spatial` (B, C, H, W): layout one-hot (one channel per layout class), inpainting mask (1 = regenerate),
  masked image (RGB in [-1, 1], zero inside the mask), and the low-resolution guide upsampled to the tile
  (RGB in [-1, 1]). Absent conditions are all-zero channels AND a zero presence flag in `cond`.
- `cond` (B, D): the prompt's sentence embedding, then metadata values each followed by a presence flag,
  then presence flags of the spatial conditions. "Unknown" is the flag at 0, never a silent 0 value.
The manifest records this layout (`cond_layout`, `spatial_layout`, metadata encodings), so the runtime can
check a package against it; training writes it from `manifest_conditions()`.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConditionError

LAYOUT_CLASSES = ("background", "road", "major_road", "building", "vegetation", "water")
NO_LAYOUT = 255  # class id meaning "no information" in a layout raster

# Metadata encodings: name -> (values it produces). Parameters live here and are copied into the manifest.
GSD_LOG2_SHIFT, GSD_LOG2_SCALE = 2.0, 2.0          # 1 m -> -1, 4 m -> 0, 16 m -> +1
YEAR_SHIFT, YEAR_SCALE = 2010.0, 10.0


# Guidance-distilled models take the guidance scale as one more condition value (Meng et al. 2023, "On
# distillation of guided diffusion models", stage 1): one evaluation per step gives what the teacher's two
# (conditional + unconditional) gave. Encoded (w - shift) / scale, so w = 1 (no guidance) is 0.
GUIDANCE_SHIFT, GUIDANCE_SCALE = 1.0, 4.0
GUIDANCE_RANGE = (1.0, 5.0)  # what distillation trains on; a request outside it is refused, not extrapolated


@dataclass(frozen=True)
class CondLayout:
    """Offsets of every segment of the global condition vector. guidance_range: set for a model that takes
    the guidance scale as an input (guidance-distilled): the scale range it was trained for, the scale encoded
    (w - guidance_shift) / guidance_scale."""

    text_dim: int
    guidance_range: Optional[Tuple[float, float]] = None
    guidance_shift: float = GUIDANCE_SHIFT
    guidance_scale: float = GUIDANCE_SCALE

    @property
    def segments(self) -> Dict[str, tuple]:
        names = [("text", self.text_dim), ("text_present", 1),
                 ("gsd", 1), ("gsd_present", 1),
                 ("lon", 2), ("lon_present", 1),
                 ("lat", 1), ("lat_present", 1),
                 ("date", 3), ("date_present", 1),
                 ("layout_present", 1), ("inpaint_present", 1), ("guide_present", 1)]
        if self.guidance_range is not None:
            names.append(("guidance", 1))
        out, off = {}, 0
        for name, size in names:
            out[name] = (off, size)
            off += size
        return out

    @property
    def dim(self) -> int:
        off, size = list(self.segments.values())[-1]
        return off + size

    @classmethod
    def from_manifest(cls, cnd_m: dict) -> "CondLayout":
        """The layout a package's `conditions` block describes (checked against its cond_dim)."""
        gi = cnd_m.get("guidance_input")
        text_dim = int(cnd_m["cond_layout"]["text"][1])
        lay = cls(text_dim) if gi is None else cls(text_dim, tuple(gi["range"]), float(gi["shift"]), float(gi["scale"]))
        if "cond_dim" in cnd_m and lay.dim != cnd_m["cond_dim"]:
            raise ConditionError(f"The model's condition vector has {cnd_m['cond_dim']} values; this plugin's "
                                 f"encoding of its conditions has {lay.dim}.")
        return lay


def encode_guidance(layout: CondLayout, guidance: float) -> float:
    lo, hi = layout.guidance_range
    if not lo <= guidance <= hi:
        raise ConditionError(f"This model has classifier-free guidance built in (distilled) for scales {lo:g} to "
                             f"{hi:g}; got {guidance:g}. Choose a guidance scale in that range.")
    return (guidance - layout.guidance_shift) / layout.guidance_scale


def spatial_layout(n_classes: int = len(LAYOUT_CLASSES), image_channels: int = 3) -> Dict[str, tuple]:
    """Channel offsets of the spatial conditions. image_channels: what the denoiser works on (3 for pixel
    models; a latent model's masked image and guide are encoded by its autoencoder: its latent channels), all on
    the denoiser's grid (latent cells: layout as class fractions, the mask max-pooled)."""
    c = image_channels
    return {"layout": (0, n_classes), "mask": (n_classes, 1), "masked_image": (n_classes + 1, c),
            "guide": (n_classes + 1 + c, c)}


def spatial_channels(n_classes: int = len(LAYOUT_CLASSES), image_channels: int = 3) -> int:
    return n_classes + 1 + 2 * image_channels


def encode_gsd(gsd_m: float) -> float:
    return (math.log2(gsd_m) - GSD_LOG2_SHIFT) / GSD_LOG2_SCALE


def encode_date(date: str) -> np.ndarray:
    try:
        d = _dt.date.fromisoformat(str(date))
    except ValueError as exc:
        raise ConditionError(f"The date {date!r} is not an ISO date (yyyy-mm-dd).") from exc
    doy = d.timetuple().tm_yday
    a = 2 * math.pi * doy / 365.25
    return np.array([(d.year - YEAR_SHIFT) / YEAR_SCALE, math.sin(a), math.cos(a)], np.float32)


def cond_vectors(layout: CondLayout, text_emb: Optional[np.ndarray], batch: int = 1, *,
                 gsd_m: Optional[float] = None, lon: Optional[float] = None, lat: Optional[float] = None,
                 date: Optional[str] = None, has_layout: bool = False, has_inpaint: bool = False,
                 has_guide: bool = False, guidance: Optional[float] = None) -> np.ndarray:
    """Build (batch, D) global condition vectors; any argument left None is encoded as unknown.
    guidance: the scale, written only for a guidance-distilled layout (required there, ignored otherwise)."""
    seg = layout.segments
    v = np.zeros((batch, layout.dim), np.float32)

    def put(name, values):
        off, size = seg[name]
        v[:, off:off + size] = np.asarray(values, np.float32).reshape(-1, size) if np.ndim(values) > 1 \
            else np.asarray(values, np.float32).reshape(size)
        v[:, seg[name + "_present"][0]] = 1.0

    if text_emb is not None:
        text_emb = np.asarray(text_emb, np.float32)
        if text_emb.shape[-1] != layout.text_dim:
            raise ConditionError(f"Text embedding has {text_emb.shape[-1]} values, the model expects "
                                 f"{layout.text_dim}.")
        put("text", text_emb)
    if gsd_m is not None:
        if not (gsd_m > 0 and math.isfinite(gsd_m)):
            raise ConditionError(f"GSD must be a positive number of metres (got {gsd_m!r}).")
        put("gsd", [encode_gsd(gsd_m)])
    if lon is not None:
        r = math.radians(lon)
        put("lon", [math.sin(r), math.cos(r)])
    if lat is not None:
        if not -90 <= lat <= 90:
            raise ConditionError(f"Latitude {lat} is outside -90..90.")
        put("lat", [lat / 90.0])
    if date is not None:
        put("date", encode_date(date))
    for name, flag in (("layout_present", has_layout), ("inpaint_present", has_inpaint),
                       ("guide_present", has_guide)):
        v[:, seg[name][0]] = float(flag)
    if layout.guidance_range is not None:
        if guidance is None:
            raise ConditionError("This model takes the guidance scale as an input; none was given.")
        v[:, seg["guidance"][0]] = encode_guidance(layout, float(guidance))
    return v


def layout_onehot(ids: np.ndarray, n_classes: int = len(LAYOUT_CLASSES)) -> np.ndarray:
    """(H, W) class ids -> (n_classes, H, W) float32 one-hot; NO_LAYOUT pixels are all-zero."""
    ids = np.asarray(ids)
    bad = (ids >= n_classes) & (ids != NO_LAYOUT)
    if bad.any():
        raise ConditionError(f"Layout contains class ids {sorted(set(ids[bad].tolist()))[:5]} but the model "
                             f"knows {n_classes} classes (0..{n_classes - 1}; {NO_LAYOUT} = no information).")
    out = np.zeros((n_classes,) + ids.shape, np.float32)
    for k in range(n_classes):
        out[k] = ids == k
    return out


# Conditions the unconditional branch of classifier-free guidance can drop (training drops each at random, so
# the model knows them absent). Guiding the layout too lifts rsgen-base 0.2.0's layout mIoU ratio from 0.66 to
# 1.07 at guidance 3 (MODEL_CARD.md) at no extra cost: it is the same second evaluation.
GUIDABLE = ("text", "layout")


def manifest_conditions(text_dim: int, metadata_coverage: Optional[dict] = None,
                        guidance_input: bool = False, image_channels: int = 3) -> dict:
    """The `conditions` block of a model manifest for this encoding (guidance_input: guidance-distilled;
    image_channels: a latent model's latent channels)."""
    lay = CondLayout(text_dim, GUIDANCE_RANGE if guidance_input else None)
    out = {
        "cond_dim": lay.dim,
        "cond_layout": {k: list(v) for k, v in lay.segments.items()},
        "spatial_channels": spatial_channels(image_channels=image_channels),
        "spatial_layout": {k: list(v) for k, v in spatial_layout(image_channels=image_channels).items()},
        "layout_classes": [{"id": i, "name": n} for i, n in enumerate(LAYOUT_CLASSES)],
        "no_layout_id": NO_LAYOUT,
        "metadata": {
            "gsd": {"encoding": "log2_affine", "shift": GSD_LOG2_SHIFT, "scale": GSD_LOG2_SCALE, "unit": "m"},
            "lon": {"encoding": "sincos_degrees"},
            "lat": {"encoding": "divide", "scale": 90.0},
            "date": {"encoding": "year_affine_doy_sincos", "shift": YEAR_SHIFT, "scale": YEAR_SCALE},
        },
        "metadata_coverage": metadata_coverage or {},
        "guide_factor": 4,
        "guidance_drops": list(GUIDABLE),
    }
    if guidance_input:  # guidance_drops then says what the distilled guidance drops (the teacher's rule)
        out["guidance_input"] = {"encoding": "affine", "shift": GUIDANCE_SHIFT, "scale": GUIDANCE_SCALE,
                                 "range": list(GUIDANCE_RANGE)}
    return out


def guided(cnd_m: dict, has_text: bool, has_layout: bool, guidance: float) -> Tuple[bool, bool]:
    """(drop the text, drop the layout) in the unconditional branch: the present conditions the model's
    `guidance_drops` names, none when guidance is 1 (then there is no second evaluation) or when the model
    has guidance built in (`guidance_input`: one evaluation does both)."""
    if guidance == 1.0 or "guidance_input" in cnd_m:
        return False, False
    drops = set(cnd_m.get("guidance_drops", ["text"]))
    return "text" in drops and has_text, "layout" in drops and has_layout


def unconditional(layout: CondLayout, cnd_m: dict, text_emb: Optional[np.ndarray], guidance: float,
                  **kw) -> Optional[Tuple[np.ndarray, Optional[Tuple[int, int]]]]:
    """The unconditional branch of classifier-free guidance for one request: (condition vector with every
    present condition named in the model's `guidance_drops` removed, the spatial channels (offset, count) it
    zeroes or None). None when guidance is 1 or nothing present can be dropped (then one evaluation per step).
    kw: cond_vectors' metadata and presence flags, as given to the conditional branch."""
    drop_text, drop_layout = guided(cnd_m, text_emb is not None, bool(kw.get("has_layout")), guidance)
    if not (drop_text or drop_layout):
        return None
    ukw = dict(kw, has_layout=False) if drop_layout else kw  # (never a distilled model: guided() says no)
    zero = tuple(cnd_m["spatial_layout"]["layout"]) if drop_layout else None
    return cond_vectors(layout, None if drop_text else text_emb, **ukw), zero


def guide_upsample(guide: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear (half-pixel centres, like torch's align_corners=False) upsampling of (C, h, w) to size."""
    c, h, w = guide.shape
    H, W = size
    ys = np.clip((np.arange(H) + 0.5) * h / H - 0.5, 0, h - 1)
    xs = np.clip((np.arange(W) + 0.5) * w / W - 0.5, 0, w - 1)
    y0 = np.floor(ys).astype(int); x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1); x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[:, None]; wx = (xs - x0)[None, :]
    g = guide.astype(np.float32)
    top = g[:, y0][:, :, x0] * (1 - wx) + g[:, y0][:, :, x1] * wx
    bot = g[:, y1][:, :, x0] * (1 - wx) + g[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bot * wy
