"""GenerationRequest: the one plain-data request that the dock, Processing and the CLI all build.

It holds plain values only (no QGIS objects), so a QgsTask can carry it to a worker thread, the batch runner
can read it from a job spec, and the GeoTIFF's provenance tags can record it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from .errors import ParameterError

SAMPLERS = ("dpmpp_2m", "ddim", "euler", "dpmpp_2m_sde")
# The default since rsgen-base 0.4.2 (same graphs as 0.4.1): the SDE variant's samples carry more texture and the
# scene classifier recognises 25 % of class-prompt tiles instead of 20 % (models/rsgen-base/MODEL_CARD.md).
DEFAULT_SAMPLER = "dpmpp_2m_sde"
# Which denoiser graph: "auto" = the package's fast graph for the device where it has one (int8 on the CPU,
# fp16 on a GPU), "fp32" = the exact graph everywhere (core.runtime.models.denoiser_variant).
PRECISIONS = ("auto", "fp32")
# The model a request names when it names none, at every door (dock on a fresh profile, Processing, CLI incl.
# `demo`, batch specs): rsgen-base-1, the 256 px latent 1.0 preview (its steps, guidance, sampler and autoguidance
# come from its manifest's `defaults` where a request leaves them out, core.runtime.sampling_defaults). It takes its
# text encoder from the rsgen-base package by reference, so rsgen-base (the 64 px pixel model 0.5.0) stays installed
# and stays a choice.
DEFAULT_MODEL = "rsgen-base-1"
DEFAULT_PIXEL_BUDGET = 1024 * 1024
# Super-resolution's start in the doors (Processing, dock): from the guide upsampled, noised to this strength
# (Conditions.start_strength). rsgen-base-1 1.0.0a22 on 96 held-out AID scenes x4 at 4 m: 0.6 came 0.98 dB below
# bicubic (KID 35.4), 0.5 0.45 dB below (KID 45.1), 0.4 0.09 dB below (KID 60.8), bicubic's KID 96.5; 0.5 keeps both
# the PSNR and the KID targets with margin (models/rsgen-base-1/MODEL_CARD.md, super-resolution strength).
SR_STRENGTH_DEFAULT = 0.5
MAX_AUTOGUIDANCE = 10.0  # autoguidance scale upper bound (core.engine.autoguide); the model card measures 1-3
MAX_CLASS_GUIDANCE = 50.0  # class guidance scale upper bound (core.engine.classguide); the model card measures 0-40


def date_problem(date) -> str:
    """Why `date` is not an ISO calendar date yyyy-mm-dd ('' when it is one); the batch spec says it too."""
    if not isinstance(date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        return f"{date!r} is not a date in the form yyyy-mm-dd (e.g. 2020-06-01)"
    try:
        _dt.date.fromisoformat(date)
    except ValueError as exc:
        return f"{date!r} is not a calendar date ({exc})"
    return ""


@dataclass(frozen=True)
class Conditions:
    """Conditions already made into arrays on the request's pixel grid (row 0 = north).

    layout: (H, W) uint8 class ids of the model's layout classes; 255 = no information.
    mask:   (H, W) bool, True where pixels are regenerated (inpainting); needs `image`.
    image:  (3, H, W) uint8 RGB source image (inpainting, variation).
    guide:  (3, h, w) uint8 low-resolution RGB guide (super-resolution, cascade); any h, w.
    strength: for variation (image without mask): 1.0 = ignore the image, 0.3 = stay close to it; for
              super-resolution (guide without image): below 1 the sampling starts from the guide upsampled to the
              grid, noised to that strength, so the result stays nearer a smooth upscale (start_strength).
    nodata: (H, W) bool, True where the output must stay nodata because its source had no data there (a raster
            input's nodata or non-finite pixels); written as the GeoTIFF's mask (transparent in QGIS).
    """

    layout: Optional[np.ndarray] = field(default=None, compare=False)
    mask: Optional[np.ndarray] = field(default=None, compare=False)
    image: Optional[np.ndarray] = field(default=None, compare=False)
    guide: Optional[np.ndarray] = field(default=None, compare=False)
    strength: float = 1.0
    nodata: Optional[np.ndarray] = field(default=None, compare=False)

    def start_strength(self) -> float:
        """Where the sampling starts: below 1 from the start image (the source image of a variation, else the
        guide upsampled: super-resolution) noised to this strength; 1 from noise (always so when inpainting)."""
        if self.mask is not None or (self.image is None and self.guide is None):
            return 1.0
        return self.strength

    def summary(self) -> dict:
        """What was given, for provenance tags (arrays are described, not dumped)."""
        out = {}
        for name in ("layout", "mask", "image", "guide", "nodata"):
            arr = getattr(self, name)
            if arr is not None:
                out[name] = "x".join(str(s) for s in arr.shape)
        if self.start_strength() < 1.0 or (self.image is not None and self.mask is None):
            out["strength"] = self.strength
        return out


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one generation needs, in plain values.

    extent is (xmin, ymin, xmax, ymax) in `crs` units; crs is anything pyproj reads (WKT preferred, so
    custom CRSs survive). Give either `gsd`, the pixel size in the CRS's own units (metres for UTM or
    EPSG:3857, degrees for EPSG:4326, as QGIS's raster export does; the grid then snaps to whole multiples of
    it, which anchors pixels to the world) or `width` and `height` in pixels (pixel size = extent / size).
    """

    extent: Tuple[float, float, float, float]
    crs: str
    output: str
    gsd: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 3.0
    sampler: str = DEFAULT_SAMPLER
    model: str = DEFAULT_MODEL
    date: Optional[str] = None  # ISO yyyy-mm-dd of the imagery to imitate; None = unknown
    pixel_budget: int = DEFAULT_PIXEL_BUDGET
    large_area: bool = False  # lift the pixel budget; world-anchored blocks streamed to disk (core.engine.blocks)
    # large-area block footprint: one tile plus this many window strides (changes the pixels); None: the package's
    # default (core.engine.blocks.default_block_windows: 2 for pixel packages, 1 for latent ones)
    block_windows: Optional[int] = None
    cascade: int = 0          # coarse-to-fine: first generate at gsd * cascade, then guide the fine pass with it
    precision: str = "auto"   # denoiser graph: "auto" (int8 on CPU / fp16 on GPU where the model has one) or "fp32"
    # with a guide (super-resolution, cascade): how strictly the output keeps the guide's coarse content
    # (core.engine.guideproj): 1 = exactly (its area means over the guide's cells equal the guide), 0 = the guide only
    # steers the model
    guide_consistency: float = 1.0
    # class guidance (core.engine.classguide): how strongly the model's scene classifier steers the image towards the
    # classes the prompt names; None = the model's default, 0 = off
    class_guidance: Optional[float] = None
    # autoguidance (core.engine.autoguide): how far each step moves away from what the package's weaker model
    # predicts; None = the model's default, 1 = off (models without a weaker model: always off)
    autoguidance: Optional[float] = None
    conditions: Conditions = field(default_factory=Conditions)

    def __post_init__(self):
        object.__setattr__(self, "extent", tuple(float(v) for v in self.extent))
        if len(self.extent) != 4:
            raise ParameterError("The extent needs four numbers: xmin, ymin, xmax, ymax.")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ParameterError(f"Steps must be a whole number of at least 1 (got {self.steps!r}).")
        if self.steps > 1000:
            raise ParameterError(f"Steps must be at most 1000 (got {self.steps}).")
        if self.precision not in PRECISIONS:
            raise ParameterError(f"Unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}.")
        if self.sampler not in SAMPLERS:
            raise ParameterError(f"Unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}.")
        if not (self.guidance >= 0.0) or not math.isfinite(self.guidance):
            raise ParameterError(f"Guidance must be a number of 0 or more (got {self.guidance!r}).")
        if self.date is not None and date_problem(self.date):
            raise ParameterError(f"The imagery date {date_problem(self.date)}; leave it empty when unknown.")
        try:
            str(self.prompt).encode("utf-8")
        except UnicodeEncodeError as exc:  # bytes that were not UTF-8 on a command line arrive as surrogates
            raise ParameterError(f"The prompt is not valid text: the character at position {exc.start} is not "
                                 "UTF-8 (check the terminal's encoding, or retype it).") from None
        if self.gsd is None and (self.width is None or self.height is None):
            raise ParameterError("Give either a GSD (pixel size) or both width and height in pixels.")
        if self.gsd is not None and not (0 < self.gsd < math.inf):
            raise ParameterError(f"The GSD (pixel size) must be a positive, finite number (got {self.gsd!r}).")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (int(v) != v or v < 1):
                raise ParameterError(f"The output {name} must be a positive whole number of pixels (got {v!r}).")
        if isinstance(self.guide_consistency, bool) or not isinstance(self.guide_consistency, (int, float)) or \
                not 0.0 <= self.guide_consistency <= 1.0:
            raise ParameterError(f"Guide consistency must be a number from 0 (the guide only steers) to 1 (the "
                                 f"output keeps the guide exactly) (got {self.guide_consistency!r}).")
        cg = self.class_guidance
        if cg is not None and (isinstance(cg, bool) or not isinstance(cg, (int, float)) or
                               not 0.0 <= cg <= MAX_CLASS_GUIDANCE):
            raise ParameterError(f"Class guidance must be a number from 0 (off) to {MAX_CLASS_GUIDANCE:g}, or "
                                 f"empty for the model's default (got {cg!r}).")
        ag = self.autoguidance
        if ag is not None and (isinstance(ag, bool) or not isinstance(ag, (int, float)) or
                               not 1.0 <= ag <= MAX_AUTOGUIDANCE):
            raise ParameterError(f"Autoguidance must be a number from 1 (off) to {MAX_AUTOGUIDANCE:g}, or empty for "
                                 f"the model's default (got {ag!r}).")
        if not 0.0 < self.conditions.strength <= 1.0:
            raise ParameterError(f"Strength must be in (0, 1] (got {self.conditions.strength!r}).")
        if self.block_windows is not None and (isinstance(self.block_windows, bool) or not isinstance(
                self.block_windows, int) or not 1 <= self.block_windows <= 64):
            raise ParameterError(f"block_windows must be a whole number from 1 to 64, or empty for the model's "
                                 f"default (got {self.block_windows!r}).")
        if isinstance(self.cascade, bool) or not isinstance(self.cascade, int) or not (
                self.cascade in (0, 1) or 2 <= self.cascade <= 16):
            raise ParameterError(f"The cascade factor must be 0 (off) or a whole number from 2 to 16 "
                                 f"(got {self.cascade!r}).")
        if self.cascade > 1 and self.gsd is None:
            raise ParameterError("The coarse-to-fine cascade needs a GSD (pixel size), not a width and height.")
        if not 0 <= int(self.seed) < 2**63:
            raise ParameterError(f"The seed must be a whole number from 0 to 2^63-1 (got {self.seed!r}).")

    def replace(self, **changes) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)

    def variants(self, n: int, new_output=None) -> List["GenerationRequest"]:
        """n requests that differ only in the seed (seed, seed+1, ...) and the output: with n > 1 each output
        gets `_seed<seed>` before its extension, or, when `new_output` is given (a callable returning a fresh
        path, e.g. a temporary file), that. n = 1 gives [self]."""
        if n < 1:
            raise ParameterError(f"The number of images must be at least 1 (got {n!r}).")
        if n == 1:
            return [self]
        root, ext = os.path.splitext(self.output)
        out = []
        for i in range(n):
            seed = (int(self.seed) + i) % 2**63
            output = new_output() if new_output else f"{root}_seed{seed}{ext or '.tif'}"
            out.append(self.replace(seed=seed, output=output))
        return out

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "conditions"}
        d["extent"] = list(self.extent)
        d["conditions"] = self.conditions.summary()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationRequest":
        known = {f.name for f in dataclasses.fields(cls)} - {"conditions"}
        unknown = set(d) - known - {"conditions"}
        if unknown:
            raise ParameterError(f"Unknown request keys: {', '.join(sorted(unknown))}.")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> "GenerationRequest":
        return cls.from_dict(json.loads(text))
