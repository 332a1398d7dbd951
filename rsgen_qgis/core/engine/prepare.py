"""Conditions made for one footprint (a single request's canvas or a large-area block) on the latent grid.

Every condition starts in pixels on the footprint (layout ids, guide, known image, mask, all padded to the
canvas), then goes down to the model's latent grid through its autoencoder (core.runtime.autoencoder): layout
one-hot averaged over each latent cell (class fractions), the mask max-pooled (a cell with any pixel to
regenerate is regenerated; the pixel composite afterwards keeps everything outside the pixel mask), the known
image and the guide encoded (the masked-image condition is the known latents outside the latent mask, so training
needs one encode per image, not one per random mask). With the identity autoencoder of a pixel package each of these is the pixel
array itself, so pixel models see exactly what they were trained with.

What the denoiser is told depends on its interface (core.engine.predictors): an rsgen denoiser takes spatial
channels + a global condition vector; a converted diffusers UNet takes text hidden states, DiffusionSat metadata
and a ControlNet image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from . import autoguide, classguide, prompt_bank
from .guideproj import GuideProjector
from ..conditions import diffusionsat
from ..conditions.encoding import CondLayout, NO_LAYOUT, cond_vectors, layout_onehot, unconditional
from ..errors import ConditionError, ModelPackageError
from ..geo.georef import Grid, centre_lonlat, gsd_metres_mean
from ..request import GenerationRequest


@dataclass
class Prepared:
    """Everything sampling one footprint needs. Arrays on the latent canvas (canvas_h x canvas_w cells) unless
    named _px (pixels, factor times larger)."""
    grid: Grid
    canvas_h: int
    canvas_w: int
    factor: int
    metadata: dict
    warnings: List[str]
    known: Optional[np.ndarray] = None        # (C, h, w) latents of the source image (inpainting / variation)
    mask: Optional[np.ndarray] = None         # (h, w) 1 = regenerate (latent cells)
    known_px: Optional[np.ndarray] = None     # (3, H, W) source in [-1, 1]
    mask_px: Optional[np.ndarray] = None      # (H, W)
    guide_projector: Optional[GuideProjector] = None
    decoded_projector: Optional[GuideProjector] = None  # a latent model's guide consistency, on the decoded pixels
    class_guidance: Optional[classguide.Resolved] = None
    autoguidance: float = 1.0                 # core.engine.autoguide: the weak model's scale, 1 = off
    # rsgen denoisers
    spatial: Optional[np.ndarray] = None      # (S, h, w)
    cond: Optional[np.ndarray] = None         # (1, D)
    uncond: Optional[np.ndarray] = None       # (1, D), None when guidance has nothing to drop
    uncond_zero: Optional[Tuple[int, int]] = None  # spatial channels (offset, count) the unconditional branch zeroes
    # diffusers UNets
    text: Optional[np.ndarray] = None         # (1, 77, D) prompt hidden states
    text_uncond: Optional[np.ndarray] = None  # (1, 77, D) the empty prompt's, None without guidance
    dmeta: Optional[np.ndarray] = None        # (7,) DiffusionSat metadata
    control: Optional[np.ndarray] = None      # (3, H, W) ControlNet image in [0, 1]
    extra: dict = field(default_factory=dict)


def pool_mean(a: np.ndarray, f: int) -> np.ndarray:
    """(..., H, W) -> (..., H/f, W/f) cell means (H, W multiples of f); f = 1 returns `a` itself."""
    if f == 1:
        return a
    *lead, H, W = a.shape
    return a.reshape(*lead, H // f, f, W // f, f).mean(axis=(-3, -1)).astype(np.float32)


def pool_max(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    *lead, H, W = a.shape
    return a.reshape(*lead, H // f, f, W // f, f).max(axis=(-3, -1))


GSD_EDGE_SLACK = 0.02


def metadata_for(grid: Grid, req: GenerationRequest, manifest: dict, warnings: List[str]) -> dict:
    """GSD in metres (ellipsoidal), centre lon/lat and date, each kept or set unknown by the model's policy."""
    lon, lat = centre_lonlat(grid)
    values = {"gsd_m": gsd_metres_mean(grid), "lon": lon, "lat": lat, "date": req.date}
    policy = manifest.get("conditions", {}).get("metadata_coverage", {}) or {}
    out = dict(values)
    for key, field_ in (("gsd_m", "gsd"), ("lon", "lon"), ("lat", "lat"), ("date", "date")):
        rule = policy.get(field_)
        v = values[key]
        if rule is None or v is None:
            continue
        rng = rule.get("range")
        if rng is None:
            out[key] = None  # never seen known in training: send "unknown"
            continue
        if field_ == "date":
            continue
        # a GSD at the range's edge as the user asked for it (4 m in UTM is 4.0016 ellipsoidal metres near a zone's
        # edge) is inside: 2 % slack, well below the factor of 2 between the training GSDs that matter
        slack = GSD_EDGE_SLACK if field_ == "gsd" else 0.0
        if not rng[0] * (1 - slack) <= v <= rng[1] * (1 + slack):
            if rule.get("outside") == "unknown":
                out[key] = None
            else:
                warnings.append(f"{field_} {v:.3g} is outside the model's training range {rng[0]}-{rng[1]}; "
                                "results may be poor.")
    return out


class PromptCache:
    """The prompt's embeddings for one request, made once and shared by all its footprints (blocks)."""

    def __init__(self, req: GenerationRequest, model) -> None:
        self.prompt = req.prompt.strip()
        self.model, self._emb, self._done = model, None, False
        self.reading = ""  # how the package's prompt bank read the prompt (core.engine.prompt_bank), "" without one

    def pooled(self) -> Optional[np.ndarray]:
        """rsgen: (1, D) sentence embedding (read in the package's prompt bank where it has one) or None for an
        empty prompt."""
        if not self._done:
            self._done = True
            if self.prompt:
                if self.model.text_encoder is None:
                    raise ConditionError(f"Model {self.model.package.id!r} takes no text prompt; leave the prompt "
                                         "empty.")
                self._emb, self.reading = prompt_bank.read(self.model, self.model.text_encoder.embed([self.prompt]))
        return self._emb


def class_guidance_for(req: GenerationRequest, model, emb: Optional[np.ndarray],
                       warnings: List[str]) -> classguide.Resolved:
    """The request's class guidance (core.engine.classguide) with this model and prompt embedding."""
    r = classguide.resolve(req.class_guidance, model.class_guide, None if emb is None else emb[0])
    if req.class_guidance and model.class_guide is None:
        warnings.append(f"Model {model.package.id!r} has no class guide; class guidance was not applied.")
    return r


@dataclass
class Footprint:
    """Pixel conditions on one footprint's canvas (H x W pixels, multiples of the factor), before lowering."""
    grid: Grid
    height: int
    width: int
    layout: Optional[np.ndarray] = None    # (H, W) uint8 ids, NO_LAYOUT where unknown
    guide: Optional[np.ndarray] = None     # (3, H, W) in [-1, 1], upsampled to the canvas
    known: Optional[np.ndarray] = None     # (3, H, W) in [-1, 1]
    mask: Optional[np.ndarray] = None      # (H, W) float
    strength: float = 1.0
    projector: Optional[GuideProjector] = None
    skip: bool = False                     # inpainting: no pixel of this footprint to regenerate


DECODED_CONSISTENCY = ("after decoding: the model's steps read the guide's encoding, the decoded image is held "
                       "to the guide by a smooth back-projection (core.engine.guideproj)")


def prepare(req: GenerationRequest, model, fp: Footprint, prompt: PromptCache,
            warnings: Optional[List[str]] = None) -> Prepared:
    """Lower a footprint's pixel conditions to the model's latent grid and encode them for its denoiser."""
    ae = model.autoencoder
    f = ae.factor
    if fp.height % f or fp.width % f:
        raise ConditionError(f"Internal: canvas {fp.width}x{fp.height} is not a multiple of the factor {f}.")
    warnings = [] if warnings is None else warnings
    m = model.package.manifest
    meta = metadata_for(fp.grid, req, m, warnings)
    p = Prepared(fp.grid, fp.height // f, fp.width // f, f, meta, warnings)
    needs_known = fp.known is not None
    if needs_known and not ae.can_encode:
        raise ConditionError(f"Model {model.package.id!r} has no image encoder (its autoencoder "
                             f"{ae.describe()} can only decode), so it cannot inpaint, make variations or "
                             "super-resolve from the raster (strength below 1); use a model whose package has an "
                             "encoder, or strength 1.")
    if fp.known is not None:
        p.known_px = fp.known
        p.known = ae.encode(fp.known)
    if fp.mask is not None:
        p.mask_px = fp.mask
        p.mask = pool_max(fp.mask, f)
    if model.interface == "rsgen":
        _prepare_rsgen(req, model, fp, p, prompt)
    else:
        _prepare_diffusers(req, model, fp, p, warnings)
    p.guide_projector = fp.projector if fp.guide is not None and f == 1 else None
    if fp.guide is not None and f > 1 and fp.projector is not None and model.interface == "rsgen":
        p.decoded_projector = fp.projector
        p.extra["guide_consistency"] = DECODED_CONSISTENCY
    return p


def _prepare_rsgen(req: GenerationRequest, model, fp: Footprint, p: Prepared, prompt: PromptCache) -> None:
    ae = model.autoencoder
    f, C = ae.factor, ae.channels
    cnd_m = model.package.manifest["conditions"]
    lay = cnd_m["spatial_layout"]
    for key in ("masked_image", "guide"):
        if key in lay and int(lay[key][1]) != C:
            raise ModelPackageError(f"{model.package.file('manifest.json')}: spatial condition {key!r} has "
                                    f"{lay[key][1]} channels but the autoencoder gives {C}.")
    n_cls = len(cnd_m["layout_classes"])
    spatial = np.zeros((cnd_m["spatial_channels"], p.canvas_h, p.canvas_w), np.float32)
    if fp.layout is not None:
        o, n = lay["layout"]
        spatial[o:o + n] = pool_mean(layout_onehot(fp.layout, n_cls), f)
    if fp.mask is not None:
        o, _ = lay["mask"]
        spatial[o] = p.mask
        o, n = lay["masked_image"]
        spatial[o:o + n] = p.known * (1.0 - p.mask)  # pixels for a pixel model, the source's latents for a latent one
    if fp.guide is not None:
        o, n = lay["guide"]
        spatial[o:o + n] = ae.encode(fp.guide)
    emb = prompt.pooled()
    meta = p.metadata
    cl = CondLayout.from_manifest(cnd_m)
    kw = dict(gsd_m=meta["gsd_m"], lon=meta["lon"], lat=meta["lat"], date=meta["date"],
              has_layout=fp.layout is not None, has_inpaint=fp.mask is not None, has_guide=fp.guide is not None)
    p.spatial = spatial
    p.cond = cond_vectors(cl, emb, guidance=req.guidance, **kw)
    p.uncond, p.uncond_zero = unconditional(cl, cnd_m, emb, req.guidance, **kw) or (None, None)
    p.class_guidance = class_guidance_for(req, model, emb, p.warnings)
    p.autoguidance = autoguide.resolve(req, model).scale


def _prepare_diffusers(req: GenerationRequest, model, fp: Footprint, p: Prepared, warnings: List[str]) -> None:
    m = model.package.manifest
    spec = m["conditions"].get("control")
    if spec is None:
        if fp.layout is not None or fp.guide is not None:
            raise ConditionError(f"Model {m['id']!r} has no ControlNet: it takes neither a layout nor a guide "
                                 "image; leave them out.")
    else:
        src = spec.get("source", "layout")
        other = fp.guide if src == "layout" else fp.layout
        if other is not None:
            raise ConditionError(f"Model {m['id']!r}'s ControlNet is conditioned on the {src}, not on the "
                                 f"{'guide' if src == 'layout' else 'layout'}.")
        if src == "layout" and fp.layout is not None:
            pal = np.asarray(spec["palette"], np.float32)
            ids = fp.layout
            bad = (ids >= len(pal)) & (ids != NO_LAYOUT)
            if bad.any():
                raise ConditionError(f"Layout contains class ids {sorted(set(ids[bad].tolist()))[:5]} but the "
                                     f"model knows {len(pal)} classes.")
            p.control = pal[np.where(ids == NO_LAYOUT, 0, ids)].transpose(2, 0, 1)
        elif src == "guide" and fp.guide is not None:
            p.control = (fp.guide + 1.0) / 2.0
        if fp.guide is not None:
            p.extra["guide_consistency"] = "not applied: the guide is the ControlNet's image"
    if "metadata" in m["conditions"]:
        lon, lat = centre_lonlat(fp.grid)
        p.dmeta = diffusionsat.from_manifest(m["conditions"]["metadata"], lon, lat, gsd_metres_mean(fp.grid),
                                             req.date, warnings)
    p.text = model.text_encoder.embed(req.prompt.strip())
    p.text_uncond = model.text_encoder.embed("") if req.guidance > 1.0 else None
    p.class_guidance = classguide.resolve(req.class_guidance, None, None)
