"""Batch job spec (YAML): read, validate, normalise. Every mistake names its key path (`aois.bboxes[2].bbox`).

    output: out/town            # folder for tiles/, mosaic.vrt, manifest.json (relative to the YAML file)
    crs: EPSG:32734             # the grid's CRS (anything pyproj reads)
    gsd: 2.0                    # pixel size in CRS units
    model: rsgen-base           # id or package folder (absent: rsgen-base-1);  model_dirs: [extra folders]
    seed: 7
    steps: 20                   # guidance: 3.0   sampler: dpmpp_2m_sde   date: 2020-06-01
                                # (steps, guidance, sampler absent: the model package's own defaults, as the dock)
    prompt: "a town"            # default prompt
    tile_px: 1024               # tile side in pixels (tiles sit on the world grid of the GSD)
    clip_tiles: true            # a tile covers only its part of the AOIs' bounding boxes (false: whole tiles)
    block_windows: 2            # large-area block footprint: a tile plus this many window strides (changes the pixels;
                                # absent: the model's default, 2 for pixel models and 1 for latent ones)
    precision: auto             # auto: the model's int8 graph on CPU / fp16 on GPU where it has one; fp32: exact
    aois:                       # where to generate: a vector file and/or a list of boxes
      file: aoi.gpkg            # polygons; layer: name;  prompt_attribute: prompt (per-feature prompt)
      bboxes:
        - {bbox: [xmin, ymin, xmax, ymax], prompt: "farmland", crs: EPSG:4326}
    layout:                     # optional: vector files burned into the layout condition, per block
      - {file: roads.gpkg, class: road, buffer: 4}
"""
from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..core.conditions.encoding import LAYOUT_CLASSES
from ..core.errors import RsgenError
from ..core.request import DEFAULT_MODEL, DEFAULT_SAMPLER, PRECISIONS, SAMPLERS, date_problem


class JobSpecError(RsgenError):
    """The batch job spec is malformed (unknown key, wrong type, missing value)."""


_NUM = (int, float)
# key -> (types, required). Nested dicts/lists are checked by their own schemas below.
TOP = {"output": (str, True), "crs": (str, True), "gsd": (_NUM, True), "model": (str, False),
       "model_dirs": (list, False), "seed": (int, False), "steps": (int, False), "guidance": (_NUM, False),
       "sampler": (str, False), "date": (str, False), "prompt": (str, False), "tile_px": (int, False),
       "block_windows": (int, False), "clip_tiles": (bool, False), "precision": (str, False),
       "aois": (dict, True), "layout": (list, False), "version": (int, False)}
AOIS = {"file": (str, False), "layer": (str, False), "prompt_attribute": (str, False), "bboxes": (list, False)}
BBOX = {"bbox": (list, True), "prompt": (str, False), "crs": (str, False), "name": (str, False)}
LAYOUT = {"file": (str, True), "layer": (str, False), "class": (str, True), "buffer": (_NUM, False)}


def _tname(t) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    names = {int: "a whole number", float: "a number", str: "text", list: "a list", dict: "a mapping",
             bool: "true or false"}
    return " or ".join(dict.fromkeys(names.get(x, x.__name__) for x in ts))


def _check(d: Any, schema: Dict[str, tuple], path: str) -> Dict[str, Any]:
    if not isinstance(d, dict):
        raise JobSpecError(f"{path or 'the job spec'}: expected a mapping of keys, got {type(d).__name__}.")
    for key in d:
        if key not in schema:
            where = f"{path}.{key}" if path else str(key)
            raise JobSpecError(f"{where}: unknown key; allowed here: {', '.join(sorted(schema))}.")
    for key, (types, required) in schema.items():
        where = f"{path}.{key}" if path else key
        if key not in d or d[key] is None:
            if required:
                raise JobSpecError(f"{where}: missing (required).")
            continue
        v = d[key]
        ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in (types if isinstance(types, tuple)
                                                                                  else (types,)))
        if not ok:
            raise JobSpecError(f"{where}: expected {_tname(types)}, got {type(v).__name__} {v!r}.")
    return d


@dataclass(frozen=True)
class BBoxAOI:
    bbox: Tuple[float, float, float, float]
    crs: str
    prompt: Optional[str]
    name: str


@dataclass(frozen=True)
class LayoutSource:
    file: str
    layer: Optional[str]
    class_id: int
    buffer: float


@dataclass(frozen=True)
class JobSpec:
    path: str
    output: str
    crs: str
    gsd: float
    model: str
    model_dirs: Tuple[str, ...]
    seed: int
    steps: Optional[int]      # None: the model's default (core.runtime.sampling_defaults; runner.run resolves)
    guidance: Optional[float]
    sampler: Optional[str]
    date: Optional[str]
    prompt: str
    tile_px: int
    block_windows: Optional[int]  # None: the model's default (core.engine.blocks.default_block_windows)
    aoi_file: Optional[str]
    aoi_layer: Optional[str]
    prompt_attribute: Optional[str]
    bboxes: Tuple[BBoxAOI, ...]
    layout: Tuple[LayoutSource, ...] = field(default=())
    clip_tiles: bool = True
    precision: str = "auto"

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _given(d: dict, key: str, default):
    """The value of an optional key, or the default only when the key is absent or null."""
    return default if d.get(key) is None else d[key]


def _abs(base: str, p: str) -> str:
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, os.path.expanduser(p)))


def parse(data: Any, path: str = "job.yaml") -> JobSpec:
    """Validate a loaded YAML document; file paths are made absolute relative to the YAML's folder."""
    if isinstance(data, dict) and isinstance(data.get("date"), _dt.date):
        data = dict(data, date=data["date"].isoformat())  # YAML reads 2020-06-01 as a date
    d = _check(data, TOP, "")
    base = os.path.dirname(os.path.abspath(path))
    a = _check(d["aois"], AOIS, "aois")
    if not a.get("file") and not a.get("bboxes"):
        raise JobSpecError("aois: give a vector file (aois.file) or a list of boxes (aois.bboxes), or both.")
    boxes: List[BBoxAOI] = []
    for i, b in enumerate(a.get("bboxes") or []):
        where = f"aois.bboxes[{i}]"
        b = _check(b, BBOX, where)
        vals = b["bbox"]
        if len(vals) != 4 or not all(isinstance(v, _NUM) and not isinstance(v, bool) and math.isfinite(v)
                                     for v in vals):
            raise JobSpecError(f"{where}.bbox: expected four numbers [xmin, ymin, xmax, ymax], all finite, "
                               f"got {vals!r}.")
        if not (vals[2] > vals[0] and vals[3] > vals[1]):
            raise JobSpecError(f"{where}.bbox: xmax must be above xmin and ymax above ymin, got {vals!r}.")
        boxes.append(BBoxAOI(tuple(float(v) for v in vals), b.get("crs") or d["crs"], b.get("prompt"),
                             b.get("name") or f"bbox{i}"))
    layout: List[LayoutSource] = []
    for i, s in enumerate(d.get("layout") or []):
        where = f"layout[{i}]"
        s = _check(s, LAYOUT, where)
        if s["class"] not in LAYOUT_CLASSES:
            raise JobSpecError(f"{where}.class: {s['class']!r} is not a layout class; use one of "
                               f"{', '.join(LAYOUT_CLASSES)}.")
        layout.append(LayoutSource(_abs(base, s["file"]), s.get("layer"), LAYOUT_CLASSES.index(s["class"]),
                                   float(s.get("buffer") or 0.0)))
    for i, m in enumerate(d.get("model_dirs") or []):
        if not isinstance(m, str):
            raise JobSpecError(f"model_dirs[{i}]: expected text (a folder), got {type(m).__name__}.")
    if not 0 < d["gsd"] < math.inf:  # NaN fails this too
        raise JobSpecError(f"gsd: must be a positive number (pixel size in CRS units), got {d['gsd']!r}.")
    sampler = d.get("sampler") or None
    if sampler is not None and sampler not in SAMPLERS:
        raise JobSpecError(f"sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}.")
    # a value given is used or refused, never replaced by the default (0 is a value)
    tile_px = _given(d, "tile_px", 1024)
    if tile_px < 16:
        raise JobSpecError(f"tile_px: at least 16 pixels, got {tile_px}.")
    steps = _given(d, "steps", None)
    if steps is not None and not 1 <= steps <= 1000:
        raise JobSpecError(f"steps: from 1 to 1000, got {steps}.")
    block_windows = _given(d, "block_windows", None)
    if block_windows is not None and not 1 <= block_windows <= 64:
        raise JobSpecError(f"block_windows: from 1 to 64, got {block_windows}.")
    seed = _given(d, "seed", 0)
    if not 0 <= seed < 2**63:
        raise JobSpecError(f"seed: a whole number from 0 to 2^63-1, got {seed}.")
    guidance = _given(d, "guidance", None)
    guidance = None if guidance is None else float(guidance)
    if guidance is not None and not 0 <= guidance < math.inf:
        raise JobSpecError(f"guidance: a number of 0 or more, got {guidance!r}.")
    if d.get("date") is not None and date_problem(d["date"]):
        raise JobSpecError(f"date: {date_problem(d['date'])}.")
    precision = d.get("precision") or "auto"
    if precision not in PRECISIONS:
        raise JobSpecError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)} (auto: the model's "
                           "int8 graph on the CPU, fp16 on a GPU, where it has them; fp32: the exact graph).")
    model = d.get("model") or DEFAULT_MODEL
    if os.sep in model or model.startswith("."):
        model = _abs(base, model)
    return JobSpec(
        path=os.path.abspath(path), output=_abs(base, d["output"]), crs=d["crs"], gsd=float(d["gsd"]),
        model=model, model_dirs=tuple(_abs(base, m) for m in d.get("model_dirs") or []),
        seed=seed, steps=steps, guidance=guidance,
        sampler=sampler, date=d.get("date"), prompt=d.get("prompt") or "", tile_px=tile_px,
        block_windows=block_windows,
        aoi_file=_abs(base, a["file"]) if a.get("file") else None, aoi_layer=a.get("layer"),
        prompt_attribute=a.get("prompt_attribute"), bboxes=tuple(boxes), layout=tuple(layout),
        clip_tiles=bool(d.get("clip_tiles", True)), precision=precision)


def load(path: str) -> JobSpec:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise JobSpecError(f"Cannot read the job spec {path}: {err.strerror or err}.") from err
    except yaml.YAMLError as err:
        raise JobSpecError(f"{path}: not valid YAML ({err}).") from err
    return parse(data, path)
