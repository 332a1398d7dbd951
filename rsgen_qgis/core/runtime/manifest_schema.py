"""The model manifest's schema, checked before any other code reads a manifest.

A model package is untrusted input (../shared/DESIGN.md, "Model package"): a folder somebody downloaded. Before the
run time looks at a manifest, every value it will read is checked here for its type and range, so that a wrong
type (`graphs` as a list), an absurd tile size (0, -64, 1e6) or a file name with a folder in it becomes one
ModelPackageError naming the key (`tile.size: expected a whole number from 8 to 4096, got 0`), and the package is
skipped instead of breaking every other model. Plain Python: QGIS's Python has no jsonschema everywhere.

Keys the run time does not read (training notes, descriptions) are not constrained; a block added later (the
manifest grows) is free form here until it is added to the schema, but any `file` or `*_file` value anywhere in
the manifest must still be a file listed under `files` (check_manifest's last rule), except the text encoder and
vocabulary a package takes from another package: those are named with that package's id and pinned by sha256
(`graphs.text_encoder.package`, `tokenizer.package`; core/runtime/references.py opens them).
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from ..errors import ModelPackageError

FORMAT = "rsgen-model-package/1"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_NAME = 128
# Graphs each kind of package must have. pixel: an rsgen denoiser on images (its autoencoder is the identity);
# latent: an rsgen denoiser on the latents of the autoencoder package it names ("autoencoder" section), or a
# converted diffusers pipeline (text_encoder + unet + its own vae_decoder); autoencoder: a shared autoencoder
# (core.runtime.autoencoder), no denoiser: never offered as a model to generate with.
REQUIRED_GRAPHS = {"pixel": ("denoiser",), "latent": (), "autoencoder": ()}
DIFFUSERS_GRAPHS = ("text_encoder", "unet", "vae_decoder")
DTYPES = ("float32", "float16", "int64", "int32")


def is_safe_name(name: Any) -> bool:
    """One plain folder or file name: letters, digits, '.', '_', '-' (not starting with '.' or '-'), so never
    '.', '..', a path with a separator, an absolute path or a drive letter."""
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(SAFE_NAME.match(name))


class _Bad(Exception):
    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")


def _kind(v: Any) -> str:
    return "a list" if isinstance(v, list) else "a mapping" if isinstance(v, dict) else \
        "true/false" if isinstance(v, bool) else "null" if v is None else repr(v)[:40]


class Int:
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def check(self, v: Any, where: str) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or not self.lo <= v <= self.hi:
            raise _Bad(where, f"expected a whole number from {self.lo} to {self.hi}, got {_kind(v)}")


class Num:
    def __init__(self, lo: float = -1e12, hi: float = 1e12, above: Optional[float] = None) -> None:
        self.lo, self.hi, self.above = lo, hi, above

    def check(self, v: Any, where: str) -> None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and self.lo <= v <= self.hi
        if not ok or (self.above is not None and v <= self.above):
            low = f"above {self.above:g}" if self.above is not None else f"from {self.lo:g}"
            raise _Bad(where, f"expected a number {low} to {self.hi:g}, got {_kind(v)}")


class Str:
    def __init__(self, choices: Sequence[str] = (), name: str = "", pattern: Optional[str] = None) -> None:
        """name: the value must be one safe name (is_safe_name); the text says what it names."""
        self.choices, self.name, self.pattern = tuple(choices), name, pattern and re.compile(pattern)

    def check(self, v: Any, where: str) -> None:
        if not isinstance(v, str):
            raise _Bad(where, f"expected text, got {_kind(v)}")
        if self.choices and v not in self.choices:
            raise _Bad(where, f"expected one of {', '.join(self.choices)}, got {v!r}")
        if self.name and not is_safe_name(v):
            raise _Bad(where, f"{v!r} is not {self.name} (letters, digits, '.', '_', '-'; no folders, no "
                              "'..', no absolute path)")
        if self.pattern and not self.pattern.match(v):
            raise _Bad(where, f"{v!r} is not in the expected form")


class Bool:
    def check(self, v: Any, where: str) -> None:
        if not isinstance(v, bool):
            raise _Bad(where, f"expected true or false, got {_kind(v)}")


class Null:
    def check(self, v: Any, where: str) -> None:
        if v is not None:
            raise _Bad(where, f"expected null, got {_kind(v)}")


class Any_:
    """Any of several schemas (the first one's message is given when none fits)."""

    def __init__(self, *options) -> None:
        self.options = options

    def check(self, v: Any, where: str) -> None:
        first = None
        for o in self.options:
            try:
                o.check(v, where)
                return
            except _Bad as e:
                first = first or e
        raise first


class List:
    def __init__(self, item, lo: int = 0, hi: int = 1 << 20) -> None:
        self.item, self.lo, self.hi = item, lo, hi

    def check(self, v: Any, where: str) -> None:
        if not isinstance(v, list):
            raise _Bad(where, f"expected a list, got {_kind(v)}")
        if not self.lo <= len(v) <= self.hi:
            size = f"{self.lo}" if self.lo == self.hi else f"{self.lo} to {self.hi}"
            raise _Bad(where, f"expected a list of {size} items, got {len(v)}")
        for i, x in enumerate(v):
            self.item.check(x, f"{where}[{i}]")


class Obj:
    """A mapping with required and optional keys; other keys are allowed (and not read)."""

    def __init__(self, required: Optional[Dict[str, Any]] = None, optional: Optional[Dict[str, Any]] = None) -> None:
        self.required, self.optional = required or {}, optional or {}

    def check(self, v: Any, where: str) -> None:
        if not isinstance(v, dict):
            raise _Bad(where, f"expected a mapping of keys, got {_kind(v)}")
        for key, sub in self.required.items():
            if key not in v:
                raise _Bad(where, f"the key {key!r} is missing")
            sub.check(v[key], f"{where}.{key}")
        for key, sub in self.optional.items():
            if key in v:
                sub.check(v[key], f"{where}.{key}")


class Map:
    """A mapping whose keys follow `key` and whose values all follow `value`."""

    def __init__(self, value, key=None, lo: int = 0) -> None:
        self.value, self.key, self.lo = value, key or Str(), lo

    def check(self, v: Any, where: str) -> None:
        if not isinstance(v, dict):
            raise _Bad(where, f"expected a mapping of keys, got {_kind(v)}")
        if len(v) < self.lo:
            raise _Bad(where, f"expected at least {self.lo} entries, got {len(v)}")
        for k, x in v.items():
            self.key.check(k, f"{where} key")
            self.value.check(x, f"{where}.{k}")


NAME = Str(name="a plain file name inside the package")
SHA256 = Str(pattern=r"^[0-9a-f]{64}$")
NUM = Num()
SPAN = List(Int(0, 1 << 16), 2, 2)  # [offset, count] in a vector or in the spatial channels
PAIR = List(NUM, 2, 2)
TENSOR = Obj({"dtype": Str(DTYPES), "shape": List(Any_(Int(1, 1 << 20), Str()), 1, 8)})
GRAPH = Obj({"file": NAME}, {"inputs": Map(TENSOR), "outputs": Map(TENSOR), "fp16_file": NAME, "int8_file": NAME,
                             "int8": Obj({}, {"fp32_below_timestep": Num(0, 1e6)})})
FILES = Map(Obj({"sha256": SHA256}, {"bytes": Int(0, 1 << 44)}), key=NAME, lo=1)
SCHEDULER = Obj({}, {"num_train_timesteps": Int(1, 100000), "beta_schedule": Str(), "prediction_type": Str(),
                     "timestep_spacing": Str(), "steps_offset": Int(0, 1000), "beta_start": Num(0, 1),
                     "beta_end": Num(0, 1), "alphas_cumprod": List(Num(0, 1), 1), "trained_betas": List(Num(0, 1), 1)})
TILE = Obj({"size": Int(8, 4096)}, {"multiple": Int(1, 512)})
TOKENIZER = Obj({}, {"type": Str(("wordpiece", "clip_bpe")), "vocab": NAME, "merges": NAME, "lowercase": Bool(),
                     "max_length": Int(1, 4096), "bos": Str(), "eos": Str(), "pad": Str(), "unk": Str()})
DEFAULTS = Obj({}, {"steps": Int(1, 1000), "guidance": Num(0, 100), "sampler": Str(), "class_guidance": Num(0, 50),
                    "guidance_interval": List(Num(0, 1e6), 2, 2), "autoguidance": Num(1, 10)})
CLASS_GUIDE = Obj({"file": NAME, "classes": List(Str(), 1), "phrases": Map(List(Str(), 1)),
                   "temperature": Num(0, 1e6, above=0), "min_similarity": Num(-1, 1), "min_logsnr": NUM,
                   "max_logsnr": NUM}, {"default_scale": Num(0, 50)})
COVERAGE = Obj({}, {"range": Any_(Null(), PAIR), "outside": Str(("warn", "unknown"))})
RSGEN_CONDITIONS = Obj(
    {"cond_dim": Int(1, 1 << 16), "spatial_channels": Int(0, 1024),
     "spatial_layout": Obj({k: SPAN for k in ("layout", "mask", "masked_image", "guide")}),
     "layout_classes": List(Obj({"id": Int(0, 254), "name": Str()}), 1, 254),
     "cond_layout": Obj({"text": SPAN})},
    {"no_layout_id": Int(0, 255), "guide_factor": Int(1, 64), "guidance_drops": List(Str()),
     "guidance_input": Obj({"range": PAIR, "shift": NUM, "scale": Num(0, 1e6, above=0)}),
     "metadata": Map(Obj({}, {"shift": NUM, "scale": NUM, "encoding": Str()})),
     "metadata_coverage": Map(Any_(Null(), COVERAGE)),
     "prompt_bank": Obj({"phrases": List(Str(pattern=r"^[^\n]{1,200}$"), 1, 4096),
                         "temperature": Num(0, 1, above=0)}, {"source": Str()})})
AE_PART = Obj({"file": NAME}, {"fp16_file": NAME, "input": Str(), "output": Str()})
AUTOENCODER = Obj({"factor": Int(1, 64), "channels": Int(1, 1024), "decoder": AE_PART},
                  {"encoder": AE_PART, "image_range": PAIR,
                   "latent_stats": Obj({}, {"shift": List(NUM, 1), "scale": List(Num(0, 1e12, above=0), 1)}),
                   "window": Obj({}, {"latent_tile": Int(1, 4096), "latent_overlap": Int(0, 4095)})})
AUTOENCODER_ENTRY = Obj({"package": Str(name="one safe folder name (the autoencoder package's id)")},
                        {"factor": Int(1, 64), "channels": Int(1, 1024),
                         "decoder_sha256": SHA256})
PACKAGE_ID = Str(name="one safe folder name (the id of the package it is taken from)")
# A text encoder taken from another package (core.runtime.references): that package's id, the file name in it and
# the sha256 this model was trained with; the tokenizer names the same package and pins its vocabulary the same way.
TEXT_ENCODER_REF = Obj({"package": PACKAGE_ID, "file": NAME, "sha256": SHA256},
                       {"inputs": Map(TENSOR), "outputs": Map(TENSOR)})
TOKENIZER_REF = Obj({"type": Str(("wordpiece",)), "package": PACKAGE_ID, "vocab": NAME, "vocab_sha256": SHA256})
LATENT = Obj({"channels": Int(1, 1024), "scaling_factor": Num(0, 1e6, above=0), "vae_scale_factor": Int(1, 64)},
             {"shift_factor": NUM})


def _package(top: bool, kind: str) -> Obj:
    """The package manifest's own keys; `top`: a package's manifest.json (its id names a folder), not the
    manifest of a cascade base inside it (whose id is 'package/base')."""
    req = {"id": Str(name="one safe folder name") if top else Str(), "files": FILES, "graphs": Map(GRAPH, key=Str()),
           "scheduler": SCHEDULER, "tile": TILE, "conditions": Obj()}
    opt = {"name": Str(), "version": Str(), "kind": Str(tuple(REQUIRED_GRAPHS)), "tokenizer": TOKENIZER,
           "defaults": DEFAULTS, "class_guide": CLASS_GUIDE, "latent": LATENT}
    if kind == "autoencoder":  # a part of latent models: files and its autoencoder section only
        req = {"id": req["id"], "files": FILES, "autoencoder": AUTOENCODER}
        opt = {"name": Str(), "version": Str(), "kind": Str(tuple(REQUIRED_GRAPHS)), "graphs": Map(GRAPH)}
    if top:
        opt["cascade_base"] = Obj({"factor": Int(2, 16), "manifest": Obj()})
    return Obj(req, opt)


def _named_files(m: Any, where: str = "") -> Iterator[Tuple[str, Any]]:
    """(key path, value) of every `file` / `*_file` / tokenizer file value in a manifest, at any depth."""
    if isinstance(m, dict):
        for k, v in m.items():
            if k == "files":
                continue
            path = f"{where}.{k}" if where else str(k)
            if isinstance(v, dict) and "package" in v and k in ("text_encoder", "tokenizer"):
                continue  # files of another package, pinned by sha256 (check_text_reference)
            if isinstance(k, str) and (k == "file" or k.endswith("_file")) and not isinstance(v, (dict, list)):
                yield path, v
            elif where.endswith("tokenizer") and k in ("vocab", "merges"):
                yield path, v
            elif k not in ("training", "cascade_base"):  # training notes name checkpoints, never opened here
                yield from _named_files(v, path)
    elif isinstance(m, list):
        for i, v in enumerate(m):
            yield from _named_files(v, f"{where}[{i}]")


def text_package(m: dict) -> Optional[str]:
    """The id of the package a manifest takes its text encoder from, or None (its own, or none)."""
    ref = (m.get("graphs") or {}).get("text_encoder")
    return ref.get("package") if isinstance(ref, dict) else None


def _check_text_reference(m: dict, root: str) -> None:
    """A text encoder named by reference: pinned, with its tokenizer from the same package, never the package's own
    id (one level only: the named package must carry its own text encoder, core.runtime.references)."""
    graph, tok = m["graphs"].get("text_encoder"), m.get("tokenizer")
    ref = text_package(m)
    tok_ref = tok.get("package") if isinstance(tok, dict) else None
    if ref is None and tok_ref is None:
        return
    if ref is None:
        raise _Bad(f"{root}.tokenizer.package", "a tokenizer is taken from another package only with its text "
                                                "encoder (graphs.text_encoder.package)")
    TEXT_ENCODER_REF.check(graph, f"{root}.graphs.text_encoder")
    for key in graph:
        if key.endswith("_file"):
            raise _Bad(f"{root}.graphs.text_encoder.{key}", "a text encoder taken from another package is one file "
                                                            "('file', pinned by 'sha256')")
    if "unet" in m["graphs"]:
        raise _Bad(f"{root}.graphs.text_encoder.package", "a converted diffusers pipeline carries its own CLIP text "
                                                          "encoder")
    TOKENIZER_REF.check(tok, f"{root}.tokenizer")
    if tok_ref != ref:
        raise _Bad(f"{root}.tokenizer.package", f"the vocabulary must come from the text encoder's package {ref!r}, "
                                                f"not {tok_ref!r}")
    if ref == m.get("id"):
        raise _Bad(f"{root}.graphs.text_encoder.package", f"{ref!r} is this package's own id (a package cannot take "
                                                          "its text encoder from itself)")


def _check_weak(m: dict, root: str) -> None:
    """Autoguidance (core.engine.autoguide): a weak denoiser is one graph with the denoiser's interface, in an rsgen
    denoiser package; a default scale needs one."""
    graphs, where = m.get("graphs", {}), f"{root}.graphs.weak_denoiser"
    weak = graphs.get("weak_denoiser")
    if weak is None:
        if "autoguidance" in (m.get("defaults") or {}):
            raise _Bad(f"{root}.defaults.autoguidance", "autoguidance needs a weak model (graphs.weak_denoiser)")
        return
    if "denoiser" not in graphs or "unet" in graphs:
        raise _Bad(where, "a weak model guides an rsgen denoiser; this package has none")
    for key in weak:
        if key.endswith("_file") or key == "int8":
            raise _Bad(f"{where}.{key}", "a weak model is one graph ('file'), run as the package ships it")
    den = graphs["denoiser"]
    for part in ("inputs", "outputs"):
        if weak.get(part) != den.get(part):
            raise _Bad(f"{where}.{part}", "a weak model takes the denoiser's inputs and gives its outputs (the same "
                                          "names, types and shapes)")
    Str().check(weak.get("source", ""), f"{where}.source")


def _check_one(m: Any, top: bool, root: str) -> None:
    if not isinstance(m, dict):
        raise _Bad(root, f"expected a mapping of keys, got {_kind(m)}")
    if m.get("format") != FORMAT:
        raise _Bad(f"{root}.format", f"not an rsgen model package (format must be {FORMAT!r})")
    kind = m.get("kind", "pixel")
    Str(tuple(REQUIRED_GRAPHS)).check(kind, f"{root}.kind")
    _package(top, kind).check(m, root)
    graphs = m.get("graphs", {})
    if kind == "latent" and "unet" in graphs:  # a converted diffusers pipeline
        for g in DIFFUSERS_GRAPHS:
            if g not in graphs:
                raise _Bad(f"{root}.graphs", f"no {g!r} graph, which a converted diffusers pipeline needs")
        LATENT.check(m.get("latent"), f"{root}.latent")
        Obj({"vocab": NAME, "merges": NAME, "type": Str(("clip_bpe",))}).check(m.get("tokenizer"),
                                                                               f"{root}.tokenizer")
    elif kind != "autoencoder":  # an rsgen denoiser, on pixels or on an autoencoder package's latents
        if "denoiser" not in graphs:
            raise _Bad(f"{root}.graphs", f"no 'denoiser' graph, which a {kind} model needs")
        RSGEN_CONDITIONS.check(m["conditions"], f"{root}.conditions")
        if kind == "latent":
            AUTOENCODER_ENTRY.check(m.get("autoencoder"), f"{root}.autoencoder")
    if kind != "autoencoder":
        _check_text_reference(m, root)
    _check_weak(m, root)
    iv = (m.get("defaults") or {}).get("guidance_interval")
    if iv is not None and not iv[0] < iv[1]:
        raise _Bad(f"{root}.defaults.guidance_interval", f"expected [lowest, highest] timestep, got {iv}")
    for where, name in _named_files(m):
        if name not in m["files"]:
            raise _Bad(f"{root}.{where}", f"names the file {name!r}, which is not listed under 'files' with its "
                                            "sha256 (every file a package uses must be)")


def check_manifest(m: Any, source: str) -> None:
    """Raise ModelPackageError naming `source` (the manifest's path) and the first key that is wrong."""
    try:
        _check_one(m, True, "manifest")
        if "cascade_base" in m:
            _check_one(m["cascade_base"]["manifest"], False, "cascade_base.manifest")
    except _Bad as e:
        raise ModelPackageError(f"{source}: not a valid model manifest: {e}.") from None
