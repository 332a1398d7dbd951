"""Large areas: world-anchored blocks of fused windows, cross-faded, streamed to disk.

Why blocks. Fusing overlapping windows every step makes each pixel depend, after n steps, on pixels n windows
away: a whole-canvas fusion is seamless but its result depends on the extent asked for, and it needs the
whole canvas in memory. So the world (the pixel grid of the request's GSD, anchored at CRS (0, 0)) is cut
into fixed blocks: block (i, j) covers world pixels [j*B, j*B + B + D) x [i*B, i*B + B + D) (B = block pitch,
D = the band neighbouring blocks share). Inside a block the windows tile its footprint exactly, are batched
through the ONNX session and fused every step (seamless inside); blocks are cross-faded over their shared
band with raised-cosine weights that sum to one, contrast-preserving
(core.engine.blockblend: low frequencies blended linearly, detail renormalised by the blend's measured standard
deviation, so the band is as sharp as the blocks instead of a soft stripe). Each block is a pure function
of (seed, world position, prompt, metadata at the block, conditions there), and every pixel is the same
weighted sum of the same blocks in the same (world row-major) order whatever the request, so:
- two requests that overlap give byte-identical pixels in the overlap, and neighbouring requests join exactly
  as one larger request would (no seam at request borders);
- memory is one row of blocks plus a band of accumulated rows, whatever the height; rows are written to a
  tiled GeoTIFF as soon as no later block touches them (geotiff.CogStream), then converted to a COG.
Exception: spatial conditions given as arrays on the request grid (layout, guide) are unknown outside it; a
block reaching past the request sees "no layout" / the guide's edge there. So with conditions, identity
across requests holds only where both requests cover the blocks' whole footprints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from . import autoguide, loop
from .blockblend import BlockBlender
from .guideproj import GuideProjector, guide_projector
from .inpaint import composite
from .prepare import Footprint, PromptCache, prepare
from .samplers import Schedule, make_sampler
from ..conditions.encoding import NO_LAYOUT, guided
from ..errors import Cancelled, ConditionError
from ..geo.georef import Grid
from ..request import GenerationRequest
from ..runtime.models import MAX_BATCH

# Block geometry for a model tile T (README, "Large areas"). Windows overlap by 3T/16 (stride 13T/16), a block's
# footprint is T + k strides (k = block_windows: (k + 1)^2 windows), and neighbouring blocks share a band of T/4.
# Blocks sit on the world grid and every pixel is computed once per block covering it, so an area costs what
# the blocks' footprints exceed it by: with k = 2 (168 px footprints, 152 px pitch for T = 64) 1, 4 and 16 km2
# at 2 m cost 2.9, 2.2 and 1.9 window pixels per output pixel (mean over grid alignments), against 7.0, 4.5
# and 3.3 with the earlier T/4 overlap, one-tile bands and k = 6. Seam figures at 1024 px (tools/seams.py):
# overlap T/8 left window borders at 1.06, 3T/16 at 1.03; T/2 bands read 0.945 on band lines, T/4 1.01.
# The default k depends on the package (a request's block_windows None): 2 for pixel packages, 1 for latent ones.
# A latent tile is 32 cells, so a block of k = 2 has a 672 px footprint at a 608 px pitch, and a 1 km2 area at 2 m
# (500 px) costs 33.8 windows a step over grid alignments; k = 1 (464 px footprint, 400 px pitch) costs 22.9, and
# 54.5 against 68.0 at 4 km2 (1.48x and 1.25x fewer windows, the decoded area falling alike).
DEFAULT_BLOCK_WINDOWS = 2
DEFAULT_BLOCK_WINDOWS_LATENT = 1
OVERLAP_FRACTION = 3 / 16
BAND_FRACTION = 1 / 4


def default_block_windows(factor: int) -> int:
    """The block footprint (a tile plus this many window strides) a request without block_windows gets: 1 for a
    latent package (factor > 1: its 32-cell tile makes large blocks costly on small areas), 2 for a pixel one."""
    return DEFAULT_BLOCK_WINDOWS_LATENT if factor > 1 else DEFAULT_BLOCK_WINDOWS


@dataclass(frozen=True)
class BlockLayout:
    """Window and block geometry of a model on its latent grid (world cells of `factor` x `factor` pixels; pixel
    models: factor 1, cells are pixels): `block` is the pitch, `band` the width neighbouring blocks share
    (0 = one tile); the footprint (block + band) is a whole number of window strides plus a tile."""
    tile: int
    overlap: int
    block: int
    band: int = 0
    factor: int = 1

    def __post_init__(self):
        if self.band == 0:
            object.__setattr__(self, "band", self.tile)
        if (self.span - self.tile) % self.stride or not 0 < self.band <= self.block:
            raise ValueError(f"Inconsistent block layout {self}: the footprint must be a tile plus whole strides "
                             "and the band no wider than the pitch.")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def span(self) -> int:
        """Side of a block's footprint: its pitch plus the band it shares with the next block."""
        return self.block + self.band

    @property
    def window_edges(self) -> Tuple[int, ...]:
        """Where windows start and end inside a block, in pixels modulo the pitch (the lines a seam would follow)."""
        n = (self.span - self.tile) // self.stride + 1
        return tuple(sorted({(i * self.stride + e) * self.factor % self.px_block for i in range(n) for e in (0, self.tile)}))

    @property
    def windows_per_block(self) -> int:
        return ((self.span - self.tile) // self.stride + 1) ** 2

    @property
    def px_block(self) -> int:
        return self.block * self.factor

    @property
    def px_span(self) -> int:
        return self.span * self.factor

    @property
    def px_band(self) -> int:
        return self.band * self.factor

    @classmethod
    def for_manifest(cls, manifest: dict, block_windows: Optional[int] = None, factor: int = 1) -> "BlockLayout":
        """block_windows None: the package's default (default_block_windows)."""
        tile = int(manifest["tile"]["size"]) // factor
        overlap, band = max(1, round(tile * OVERLAP_FRACTION)), max(1, round(tile * BAND_FRACTION))
        k = default_block_windows(factor) if block_windows is None else max(1, int(block_windows))
        span = tile + k * (tile - overlap)
        return cls(tile, overlap, span - band, band, factor)

    @classmethod
    def for_model(cls, model, block_windows: Optional[int] = None) -> "BlockLayout":
        return cls.for_manifest(model.package.manifest, block_windows, model.autoencoder.factor)

    @property
    def block_windows(self) -> int:
        """k: the footprint is a tile plus k strides."""
        return (self.span - self.tile) // self.stride

    def block_range(self, lo: int, n: int) -> range:
        """Indices k of the blocks whose pixel footprint [k*B*f, k*B*f + span*f) meets world pixels [lo, lo + n)."""
        b, span = self.px_block, self.px_span
        kmin = (lo - span) // b + 1
        kmax = -((-(lo + n)) // b) - 1
        return range(kmin, kmax + 1)

    def blocks(self, grid: Grid) -> Tuple[range, range]:
        col0, row0 = grid.world_offset
        return self.block_range(row0, grid.height), self.block_range(col0, grid.width)

    def n_windows(self, grid: Grid) -> int:
        rows, cols = self.blocks(grid)
        return len(rows) * len(cols) * self.windows_per_block


def fade(span: int, width: int) -> np.ndarray:
    """1-D block weight: raised-cosine ramps over `width` at both ends, so two blocks overlapping by `width`
    sum to one there; never zero."""
    w = np.ones(span, np.float32)
    i = np.arange(width, dtype=np.float64)
    up = (0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / width)).astype(np.float32)
    w[:width] = up
    w[span - width:] = up[::-1]
    return w


def guide_window(guide: np.ndarray, full: Tuple[int, int], row_off: int, col_off: int, h: int, w: int) -> np.ndarray:
    """The part [row_off, row_off + h) x [col_off, col_off + w) of `guide` (C, gh, gw) bilinearly upsampled to
    the full grid size `full` (as conditions.guide_upsample does); pixels beyond the grid repeat its edge."""
    c, gh, gw = guide.shape
    H, W = full
    yy = np.clip(np.arange(row_off, row_off + h), 0, H - 1)
    xx = np.clip(np.arange(col_off, col_off + w), 0, W - 1)
    ys = np.clip((yy + 0.5) * gh / H - 0.5, 0, gh - 1)
    xs = np.clip((xx + 0.5) * gw / W - 0.5, 0, gw - 1)
    y0 = np.floor(ys).astype(int); x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, gh - 1); x1 = np.minimum(x0 + 1, gw - 1)
    wy = (ys - y0)[:, None].astype(np.float32); wx = (xs - x0)[None, :].astype(np.float32)
    g = guide.astype(np.float32)
    top = g[:, y0][:, :, x0] * (1 - wx) + g[:, y0][:, :, x1] * wx
    bot = g[:, y1][:, :, x0] * (1 - wx) + g[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bot * wy


def check_conditions(req: GenerationRequest, grid: Grid) -> None:
    c = req.conditions
    if c.mask is not None and c.image is None:
        raise ConditionError("Inpainting needs the source image as well as the mask.")
    for name, a, lead in (("source image", c.image, (3,)), ("mask", c.mask, ())):
        if a is not None and np.shape(a) != lead + (grid.height, grid.width):
            raise ConditionError(f"The {name} is {np.shape(a)[-1]}x{np.shape(a)[-2]} pixels but the output grid "
                                 f"is {grid.width}x{grid.height}; it must be made on the request's grid.")
    if c.mask is not None and not np.asarray(c.mask).any():
        raise ConditionError("The inpainting mask is empty: no pixel to regenerate.")
    if c.layout is not None and np.shape(c.layout) != (grid.height, grid.width):
        raise ConditionError(f"The layout is {np.shape(c.layout)[-1]}x{np.shape(c.layout)[-2]} pixels but the "
                             f"output grid is {grid.width}x{grid.height}; it must be made on the request's grid.")
    if c.guide is not None:
        g = np.asarray(c.guide)
        if g.ndim != 3 or g.shape[0] != 3:
            raise ConditionError(f"The guide image must be RGB (3, h, w); got shape {g.shape}.")


@dataclass
class LargeAreaStats:
    blocks: int = 0
    windows: int = 0             # windows per step, all blocks
    window_evals: int = 0        # windows x steps actually run
    max_band_rows: int = 0       # most grid rows held in the accumulator at once (memory)
    band_correlation: Optional[float] = None  # mean correlation of neighbouring blocks' detail in their bands
    band_correlation_bands: Optional[tuple] = None  # the same per detail band (blockblend.RADII), finest first
    seconds: float = 0.0
    layout: Optional[BlockLayout] = None
    warnings: List[str] = field(default_factory=list)


class _BlockRunner:
    """Generates one block footprint (3, span*f, span*f) in [-1, 1]: its conditions in pixels on the footprint
    (core.engine.prepare), the shared sampling loop on its latent canvas, then the autoencoder's windowed decode.
    State shared by all blocks of a request."""

    def __init__(self, req: GenerationRequest, model, grid: Grid, lay: BlockLayout,
                 window_batch: int, cancelled: Callable[[], bool], tick: Callable[[int], None],
                 layout_source: Optional[Callable[[Grid], np.ndarray]] = None,
                 guide_source: Optional[Callable[[Grid], np.ndarray]] = None):
        self.req, self.model, self.grid, self.lay = req, model, grid, lay
        self.batch, self.cancelled, self.tick = window_batch, cancelled, tick
        self.prompt = PromptCache(req, model)
        # A block's windows in one ONNX call where the graph's batch profile allows it (its 9 windows as one batch
        # of 9 instead of 8 + 1: 1 km2 at 2 m in 26.0 s instead of 27.1 on 2 cores); window_batch 1 stays 1.
        whole = lay.windows_per_block * evaluations_per_window(req, model.package.manifest)
        if window_batch > 1 and whole <= MAX_BATCH:
            self.batch = lay.windows_per_block
        m = model.package.manifest
        self.cnd_m = m.get("conditions", {})
        self.schedule = Schedule.from_config(m["scheduler"])
        c = req.conditions
        self.guide = None if c.guide is None else np.asarray(c.guide, np.float32) / 127.5 - 1.0
        self.layout = None if c.layout is None else np.asarray(c.layout, np.uint8)
        self.image = None if c.image is None else np.asarray(c.image)
        self.mask = None if c.mask is None else np.asarray(c.mask, np.float32)
        self.strength = c.start_strength()
        self.layout_source = layout_source
        self.guide_source = guide_source
        if guide_source is not None and self.guide is not None:
            raise ConditionError("Give the guide either as an array or as a source, not both.")
        if layout_source is not None and self.layout is not None:
            raise ConditionError("Give the layout either as an array or as a source, not both.")

    def _window(self, a: np.ndarray, r_off: int, c_off: int, L: int, fill) -> np.ndarray:
        """The footprint [r_off, r_off + L) x [c_off, c_off + L) of a request-grid array (.., H, W); outside the
        grid: `fill` ("edge" repeats the nearest pixel)."""
        H, W = self.grid.height, self.grid.width
        if fill == "edge":
            rr = np.clip(np.arange(r_off, r_off + L), 0, H - 1)
            cc = np.clip(np.arange(c_off, c_off + L), 0, W - 1)
            return a[..., rr[:, None], cc[None, :]]
        out = np.full(a.shape[:-2] + (L, L), fill, a.dtype)
        r0, r1 = max(0, r_off), min(H, r_off + L)
        c0, c1 = max(0, c_off), min(W, c_off + L)
        if r1 > r0 and c1 > c0:
            out[..., r0 - r_off:r1 - r_off, c0 - c_off:c1 - c_off] = a[..., r0:r1, c0:c1]
        return out

    def footprint(self, kr: int, kc: int) -> Footprint:
        lay, grid = self.lay, self.grid
        col0, row0 = grid.world_offset
        L = lay.px_span
        r_off, c_off = kr * lay.px_block - row0, kc * lay.px_block - col0
        bgrid = grid.window(c_off, r_off, L, L)
        fp = Footprint(bgrid, L, L, strength=self.strength)
        if self.layout_source is not None:
            ids = np.asarray(self.layout_source(bgrid), np.uint8)
            if ids.shape != (L, L):
                raise ConditionError(f"The layout source gave {ids.shape}, expected {(L, L)}.")
            fp.layout = ids
        elif self.layout is not None:
            fp.layout = self._window(self.layout, r_off, c_off, L, NO_LAYOUT)
        if self.image is not None:
            fp.known = self._window(self.image, r_off, c_off, L, "edge").astype(np.float32) / 127.5 - 1.0
        if self.mask is not None:
            fp.mask = self._window(self.mask, r_off, c_off, L, 0.0)
            fp.skip = not fp.mask.any()  # nothing to regenerate in this block: it is the source, as it is
        if self.guide is not None or self.guide_source is not None:
            if self.guide is not None:
                g = guide_window(self.guide, (grid.height, grid.width), r_off, c_off, L, L)
            else:
                g = np.asarray(self.guide_source(bgrid), np.float32)
                if g.shape != (3, L, L):
                    raise ConditionError(f"The guide source gave {g.shape}, expected {(3, L, L)}.")
                g = g / 127.5 - 1.0
            fp.guide = g
            fp.projector = self._block_projector(g, bgrid, r_off, c_off)
            if fp.known is None and self.strength < 1.0:  # super-resolution from the upsampled guide (SDEdit)
                fp.known = g
        return fp

    def _block_projector(self, block_guide: np.ndarray, bgrid: Grid, r_off: int, c_off: int):
        """Guide consistency for a block: a guide array as coarse as the model's guide is held on its own pixels
        wholly inside the block (exact, as on the single-request path); otherwise (the cascade's guide source,
        a fine guide array) on cells of the model's guide factor anchored to the block, so to the world."""
        req, grid, L = self.req, self.grid, self.lay.px_span
        if req.guide_consistency <= 0:
            return None
        factor = int(self.cnd_m.get("guide_factor", 4))
        if self.guide is not None and self.guide.shape[1] <= grid.height / factor \
                and self.guide.shape[2] <= grid.width / factor:
            return GuideProjector.for_window(self.guide, (grid.height, grid.width), r_off, c_off, L, L,
                                             req.guide_consistency)
        if self.guide_source is not None and hasattr(self.guide_source, "projector"):
            own = self.guide_source.projector(bgrid, req.guide_consistency)  # the cascade's coarse pixels
            if own is not None:
                return own
        return guide_projector(req, self.cnd_m, block_guide, bgrid)

    def run(self, kr: int, kc: int) -> np.ndarray:
        lay, req, model = self.lay, self.req, self.model
        fp = self.footprint(kr, kc)
        if fp.skip:
            self.tick(lay.windows_per_block * len(make_sampler(req.sampler, self.schedule, req.steps,
                                                                self.strength).timesteps))
            return fp.known
        p = prepare(req, model, fp, self.prompt)
        if p.class_guidance is not None and p.class_guidance.target is not None:
            self.class_guidance_tag = p.class_guidance.tag
        sampler = make_sampler(req.sampler, self.schedule, req.steps, self.strength)
        x = loop.start(sampler, p, req.seed, kc * lay.block, kr * lay.block, model.autoencoder.channels,
                       self.strength)
        z = loop.run(model, p, sampler, self.schedule, x, req.guidance, lay.tile, lay.overlap, self.batch,
                     self.cancelled, tick=self.tick)
        img = np.clip(model.autoencoder.decode(z, whole=True), -1, 1)
        if p.decoded_projector is not None:  # a latent model: guide consistency on the decoded pixels
            img = p.decoded_projector.smooth(img)
        if p.mask_px is not None:  # inpainting: the block's fill composited into its source in pixels
            rgb = composite(img, p.known_px, p.mask_px, np.round((p.known_px + 1.0) * 127.5).astype(np.uint8))
            return rgb.astype(np.float32) / 127.5 - 1.0
        return img


def generate_blocks(req: GenerationRequest, model, grid: Grid, writer,
                    progress: Callable[[float, str], None], cancelled: Callable[[], bool],
                    window_batch: int = 8, block_windows: Optional[int] = None,
                    layout_source: Optional[Callable[[Grid], np.ndarray]] = None,
                    guide_source: Optional[Callable[[Grid], np.ndarray]] = None) -> LargeAreaStats:
    """Generate `grid` block by block into `writer` (anything with write(rgb_uint8, row_off, col_off))."""
    t0 = time.time()
    check_conditions(req, grid)
    lay = BlockLayout.for_model(model, block_windows if block_windows is not None else req.block_windows)
    rows, cols = lay.blocks(grid)
    sampler = make_sampler(req.sampler, Schedule.from_config(model.package.manifest["scheduler"]), req.steps,
                           req.conditions.start_strength())
    stats = LargeAreaStats(blocks=len(rows) * len(cols), windows=len(rows) * len(cols) * lay.windows_per_block,
                           layout=lay)
    total = stats.windows * len(sampler.timesteps)

    def tick(n: int) -> None:
        stats.window_evals += n
        progress(min(stats.window_evals / total, 1.0) * 0.95,
                 f"Window {stats.window_evals}/{total} (block {done_blocks + 1}/{stats.blocks})")

    done_blocks = 0
    runner = _BlockRunner(req, model, grid, lay, window_batch, cancelled, tick, layout_source, guide_source)
    col0, row0 = grid.world_offset
    H, W = grid.height, grid.width
    B, S = lay.px_block, lay.px_span
    blend = BlockBlender(B, S, fade(S, lay.px_band), W, col0)
    for kr in rows:
        d0 = kr * B
        g0, g1 = max(d0, row0), min(d0 + S, row0 + H)
        for kc in cols:
            e0 = kc * B
            h0, h1 = max(e0, col0), min(e0 + S, col0 + W)
            blend.add(kr, kc, runner.run(kr, kc), (g0, g1), (h0, h1))
            stats.max_band_rows = max(stats.max_band_rows, blend.rows_held)
            done_blocks += 1
        final = row0 + H if kr == rows[-1] else min((kr + 1) * B, row0 + H)
        n = final - blend.top
        if n > 0:
            if cancelled():
                raise Cancelled("Generation cancelled; nothing was written.")
            top = blend.top
            img = blend.take(n)
            rgb = np.round((img + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
            if runner.mask is not None:  # outside the mask the source's own bytes, whatever the blend did
                outside = runner.mask[top - row0:top - row0 + n] <= 0.5
                rgb[:, outside] = runner.image[:, top - row0:top - row0 + n][:, outside]
            writer.write(rgb, top - row0, 0)
    stats.band_correlation = blend.mean_rho
    stats.band_correlation_bands = blend.mean_rho_bands
    stats.seconds = time.time() - t0
    return stats


_speed: Dict[tuple, float] = {}
_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def _zero_feed(model, batch: int, timestep: float) -> Tuple[str, dict]:
    """A feed of zeros shaped like one batch of windows for the model's denoiser (any interface)."""
    from ..runtime.providers import resolve_dim

    m = model.package.manifest
    t = int(m["tile"]["size"]) // model.autoencoder.factor
    name = "denoiser" if model.interface == "rsgen" else "unet"
    dims = {"batch": batch, "height": t, "width": t, "sequence": int(m.get("tokenizer", {}).get("max_length", 77))}
    feed = {}
    for k, spec in m["graphs"][name]["inputs"].items():
        shape = [resolve_dim(d, dims) for d in spec["shape"]]
        feed[k] = np.full(shape, timestep, _NP[spec["dtype"]]) if k == "timestep" else \
            np.zeros(shape, _NP[spec["dtype"]])
    out = "prediction" if model.interface == "rsgen" else "noise_pred"
    return out, feed


def seconds_per_window_eval(model, batch: int = 8, timestep: float = 500.0) -> float:
    """Measured once per loaded model (and graph: a stepped int8 denoiser runs fp32 at low timesteps): seconds
    for one window through the denoiser at `timestep`, in batches of `batch`."""
    from ..runtime.ortrun import Graph

    below = getattr(model.denoiser, "exact_below", None)
    graph = model.variant if below is None else ("fp32" if timestep < below else model.variant)
    key = (model.package.path, model.provider, model.variant, graph, batch)
    if key not in _speed:
        out, feed = _zero_feed(model, batch, timestep)
        d = model.denoiser
        call = (lambda: d.run(feed, [out])) if isinstance(d, Graph) else (lambda: d.run([out], feed))
        with model.lock:
            call()  # warm-up
            t0 = time.perf_counter()
            call()
            _speed[key] = (time.perf_counter() - t0) / batch
    return _speed[key]


def seconds_per_decoded_cell(model, whole: bool = False) -> float:
    """Seconds the autoencoder takes to decode one latent cell (0 for pixel models), measured once on one
    window of its own size: per cell of the canvas when it is decoded in overlapping windows, per cell of the
    window when it is decoded whole (decode(whole=True))."""
    ae = model.autoencoder
    if ae.factor == 1:
        return 0.0
    key = (model.package.path, "decode", ae.describe())
    if key not in _speed:
        z = np.zeros((ae.channels, ae.tile, ae.tile), np.float32)
        ae.decode(z)
        t0 = time.perf_counter()
        ae.decode(z)
        _speed[key] = time.perf_counter() - t0
    return _speed[key] / (ae.tile if whole else ae.tile - ae.overlap) ** 2


def evaluations_per_window(req: GenerationRequest, manifest: dict) -> int:
    """Denoiser evaluations per window and step: 2 when classifier-free guidance has a condition to drop (a
    prompt, or a layout where the model guides layouts), else 1; one more where autoguidance runs the package's
    weak model."""
    if "unet" in manifest.get("graphs", {}):  # converted diffusers pipelines: the empty prompt's twin
        return 2 if req.guidance > 1.0 else 1
    drops = guided(manifest.get("conditions", {}), bool(req.prompt.strip()), req.conditions.layout is not None,
                   req.guidance)
    return (2 if any(drops) else 1) + (1 if autoguide.scale(req, manifest) > 1.0 else 0)


def window_seconds_per_sample(req: GenerationRequest, model) -> float:
    """Seconds one window costs over the whole sampling run: the timed per-window cost of each step's graph
    (int8 or fp32 for a stepped denoiser) times the evaluations per step."""
    cfg = evaluations_per_window(req, model.package.manifest)
    if getattr(model.denoiser, "exact_below", None) is None:
        return req.steps * cfg * seconds_per_window_eval(model)
    s = make_sampler(req.sampler, Schedule.from_config(model.package.manifest["scheduler"]), req.steps)
    return cfg * sum(seconds_per_window_eval(model, timestep=float(t)) for t in s.timesteps)


def estimate(req: GenerationRequest, model, grid: Grid) -> Tuple[int, float]:
    """(windows per step, estimated seconds) for the large-area path, before starting it."""
    lay = BlockLayout.for_model(model, req.block_windows)
    n = lay.n_windows(grid)
    rows, cols = lay.blocks(grid)
    whole = lay.span <= getattr(model.autoencoder, "whole_max", 0)  # as _BlockRunner.run decodes a block
    decode = len(rows) * len(cols) * lay.span ** 2 * seconds_per_decoded_cell(model, whole)
    return n, n * window_seconds_per_sample(req, model) + decode


def estimate_request(req: GenerationRequest, model_dirs=(), providers=None) -> Tuple[int, float]:
    """(windows per step, estimated seconds) for a request, large-area or not: what the dock and Processing
    show before starting. Loads the model (kept warm for the run that follows) and times one batch once."""
    from ..geo.georef import grid_for_request
    from ..runtime.models import load
    from .single import canvas_size, geometry
    from .tiling import windows

    grid = grid_for_request(req)
    model = load(req.model, model_dirs, providers, precision=req.precision)
    if req.large_area:
        return estimate(req, model, grid)
    tile, overlap, tile_px, mult = geometry(model)
    f = model.autoencoder.factor
    hc, wc = canvas_size(grid.height, tile_px, mult) // f, canvas_size(grid.width, tile_px, mult) // f
    n = len(windows(hc, wc, tile, overlap))
    return n, n * window_seconds_per_sample(req, model) + hc * wc * seconds_per_decoded_cell(model)


__all__ = ["BlockLayout", "default_block_windows", "generate_blocks", "estimate", "estimate_request", "evaluations_per_window", "fade",
           "guide_window", "LargeAreaStats", "seconds_per_window_eval", "DEFAULT_BLOCK_WINDOWS"]
