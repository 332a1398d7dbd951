"""Model packages: discovery, verification against the manifest, and ONNX sessions.

A package is a folder with manifest.json, ONNX graphs and small text files (../shared/DESIGN.md). We read
ONNX and JSON only and never unpickle anything. A package whose files are missing, whose sha256 differs, or
whose graphs do not have the inputs/outputs the manifest promises is refused with a message naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import ModelPackageError
from .autoencoder import Identity
from ..request import PRECISIONS

FORMAT = "rsgen-model-package/1"
# Graphs each kind of package must have. pixel: an rsgen denoiser on images (its autoencoder is the identity);
# latent: an rsgen denoiser on the latents of the autoencoder package it names ("autoencoder" section), or a
# converted diffusers pipeline (text_encoder + unet + its own vae_decoder); autoencoder: a shared autoencoder
# (core.runtime.autoencoder), no denoiser: never offered as a model to generate with.
REQUIRED_GRAPHS = {"pixel": ("denoiser",), "latent": (), "autoencoder": ()}
MAX_BATCH = 16  # largest batch a graph sees (window batch x 2 for classifier-free guidance): TensorRT profile
_HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the plugin folder
BUNDLED_DIRS = (os.path.join(_HERE, "models"), os.path.join(os.path.dirname(_HERE), "models"))
ENV_DIRS = "RSGEN_MODEL_DIRS"
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32"}


@dataclass
class ModelPackage:
    path: str
    manifest: dict

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.id)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "pixel")

    @property
    def interface(self) -> str:
        """How the denoiser is called (core.engine.predictors): 'rsgen' or 'diffusers'."""
        return "diffusers" if "unet" in self.manifest.get("graphs", {}) else "rsgen"

    @property
    def factor(self) -> int:
        """Pixels per latent cell (1 for pixel packages), from the manifest alone."""
        m = self.manifest
        if self.interface == "diffusers":
            return int(m.get("latent", {}).get("vae_scale_factor", 8))
        return int((m.get("autoencoder") or {}).get("factor", 1)) if self.kind == "latent" else 1

    @property
    def denoiser_sha256(self) -> str:
        """sha256 of the graph that makes the image (rsgen: denoiser, diffusers: UNet), for provenance tags."""
        g = self.manifest["graphs"]
        return self.manifest["files"][(g.get("denoiser") or g["unet"])["file"]]["sha256"]


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (model packages, batch tiles)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_package(path: str) -> ModelPackage:
    """Parse a package's manifest (no hashing yet); raise ModelPackageError naming what is wrong."""
    mpath = os.path.join(path, "manifest.json")
    if not os.path.isfile(mpath):
        raise ModelPackageError(f"{mpath}: no manifest.json in this model folder.")
    try:
        with open(mpath, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelPackageError(f"{mpath}: cannot read the manifest ({exc}).") from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ModelPackageError(f"{mpath}: not an rsgen model package (format must be {FORMAT!r}).")
    kind = m.get("kind", "pixel")
    if kind not in REQUIRED_GRAPHS:
        raise ModelPackageError(f"{mpath}: unknown model kind {kind!r} (expected {', '.join(REQUIRED_GRAPHS)}).")
    needed = ("id", "files", "autoencoder") if kind == "autoencoder" else \
        ("id", "files", "graphs", "scheduler", "tile", "conditions")
    for key in needed:
        if key not in m:
            raise ModelPackageError(f"{mpath}: the manifest has no {key!r}.")
    m.setdefault("graphs", {})
    for g in REQUIRED_GRAPHS[kind]:
        if g not in m["graphs"]:
            raise ModelPackageError(f"{mpath}: the manifest declares no {g!r} graph, which a {kind} model needs.")
    if kind == "latent":
        g = m["graphs"]
        if "unet" in g:
            for name in ("text_encoder", "vae_decoder"):
                if name not in g:
                    raise ModelPackageError(f"{mpath}: the manifest declares no {name!r} graph, which a converted "
                                            "diffusers pipeline needs.")
        elif "denoiser" not in g or not isinstance(m.get("autoencoder"), dict):
            raise ModelPackageError(f"{mpath}: a latent model needs a 'denoiser' graph and an 'autoencoder' "
                                    "section naming its autoencoder package (or a converted diffusers UNet).")
    for g in m["graphs"].values():
        if g["file"] not in m["files"]:
            raise ModelPackageError(f"{mpath}: graph file {g['file']!r} is not listed under 'files'.")
    return ModelPackage(os.path.abspath(path), m)


_verified: Dict[tuple, bool] = {}


def verify_files(pkg: ModelPackage) -> None:
    """Check every listed file exists with the recorded size and sha256 (cached by path, size, mtime)."""
    for name, meta in pkg.manifest["files"].items():
        p = pkg.file(name)
        if os.path.basename(name) != name:
            raise ModelPackageError(f"{p}: file names in a package may not contain folders.")
        if not os.path.isfile(p):
            raise ModelPackageError(f"{p}: file listed in the manifest is missing.")
        st = os.stat(p)
        key = (p, st.st_size, st.st_mtime_ns, meta.get("sha256"))
        if _verified.get(key):
            continue
        if "bytes" in meta and st.st_size != meta["bytes"]:
            raise ModelPackageError(f"{p}: size {st.st_size} bytes, the manifest says {meta['bytes']}; "
                                    "the file is corrupt or from another model.")
        if sha256_file(p) != meta.get("sha256"):
            raise ModelPackageError(f"{p}: sha256 does not match the manifest; the file is corrupt or from "
                                    "another model.")
        _verified[key] = True


def search_dirs(extra_dirs: Iterable[str] = ()) -> List[str]:
    dirs = list(extra_dirs) + [d for d in os.environ.get(ENV_DIRS, "").split(os.pathsep) if d]
    dirs += list(BUNDLED_DIRS)
    out = []
    for d in dirs:
        d = os.path.abspath(os.path.expanduser(d))
        if d not in out and os.path.isdir(d):
            out.append(d)
    return out


def discover(extra_dirs: Iterable[str] = (), errors: Optional[list] = None,
             autoencoders: bool = False) -> List[ModelPackage]:
    """Packages found in the given folders, $RSGEN_MODEL_DIRS and the bundled models/ (first id wins).

    A folder may itself be a package or contain packages. Unreadable packages are skipped and their
    messages appended to `errors` when a list is given. Autoencoder packages are parts of models, not models
    to generate with: listed only with autoencoders=True."""
    found: Dict[str, ModelPackage] = {}
    for d in search_dirs(extra_dirs):
        cands = [d] if os.path.isfile(os.path.join(d, "manifest.json")) else \
            [os.path.join(d, s) for s in sorted(os.listdir(d)) if os.path.isfile(os.path.join(d, s, "manifest.json"))]
        for c in cands:
            try:
                pkg = read_package(c)
            except ModelPackageError as exc:
                if errors is not None:
                    errors.append(str(exc))
                continue
            if pkg.kind == "autoencoder" and not autoencoders:
                continue
            found.setdefault(pkg.id, pkg)
    return list(found.values())


def find(model: str, extra_dirs: Iterable[str] = ()) -> ModelPackage:
    """A package by id or by folder path."""
    if os.path.isdir(model):
        return read_package(model)
    errors: list = []
    pkgs = discover(extra_dirs, errors, autoencoders=True)  # asked for by id: load() says what an autoencoder is
    for p in pkgs:
        if p.id == model:
            return p
    pkgs = [p for p in pkgs if p.kind != "autoencoder"]
    known = ", ".join(p.id for p in pkgs) or "none"
    hint = f" Problems seen: {'; '.join(errors)}" if errors else ""
    if not pkgs and not errors:  # e.g. the plugin from plugins.qgis.org, which comes without its model
        hint = (" Install a model package (such as rsgen-base.zip): the dock's model … menu, or `python -m "
                "rsgen_qgis install-model ZIP --dest DIR` and RSGEN_MODEL_DIRS=DIR.")
    raise ModelPackageError(f"Model {model!r} not found. Installed models: {known}. Searched: "
                            f"{', '.join(search_dirs(extra_dirs)) or 'no folder'}.{hint}")


def check_io(pkg: ModelPackage, graph: str, sess) -> None:
    spec = pkg.manifest["graphs"][graph]
    path = pkg.file(spec["file"])
    for kind, actual in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
        have = {a.name: a for a in actual}
        for name, want in spec.get(kind, {}).items():
            a = have.get(name)
            if a is None:
                raise ModelPackageError(f"{path}: the graph has no {kind[:-1]} {name!r} that the manifest "
                                        f"declares (it has {', '.join(have)}).")
            if _ORT_TYPES.get(a.type, a.type) != want["dtype"] or len(a.shape) != len(want["shape"]):
                raise ModelPackageError(f"{path}: {kind[:-1]} {name!r} is {a.type} with shape {a.shape}, the "
                                        f"manifest says {want['dtype']} {want['shape']}.")
            for got, exp in zip(a.shape, want["shape"]):
                if isinstance(exp, int) and isinstance(got, int) and got != exp:
                    raise ModelPackageError(f"{path}: {kind[:-1]} {name!r} has shape {a.shape}, the manifest "
                                            f"says {want['shape']}.")


@dataclass
class LoadedModel:
    package: ModelPackage
    denoiser: object
    text_encoder: Optional[object]
    provider: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    extra: dict = field(default_factory=dict)  # diffusers packages: the other graphs (core/runtime/diffusers.py)
    variant: str = "fp32"  # which denoiser graph runs: fp32, fp16 (GPU) or int8 (CPU); see denoiser_variant
    variant_sha256: str = ""  # that graph's sha256 (provenance)
    class_guide: Optional[object] = None  # core.engine.classguide.ClassGuide when the package has one
    autoencoder: object = field(default_factory=Identity)  # core.runtime.autoencoder: the latent space's edges

    @property
    def interface(self) -> str:
        return self.package.interface


class SteppedDenoiser:
    """A fast graph (int8) for the noisy steps and the exact fp32 graph for the last ones, chosen per call by the
    timestep (a call's windows share one): int8 activation ranges are calibrated over the whole trajectory, too
    coarse for the fine detail the final, low-noise steps add - run int8 there and the images gain a grain
    (MODEL_CARD.md: layout fidelity 1.18 -> 0.93; with the last three of 20 steps in fp32, 1.18). Behaves as
    the fast session for everything else (inputs, outputs, providers)."""

    def __init__(self, fast, exact, exact_below: float) -> None:
        self.fast, self.exact, self.exact_below = fast, exact, float(exact_below)

    def session_for(self, timestep: float):
        return self.exact if timestep < self.exact_below else self.fast

    def run(self, names, feed):
        return self.session_for(float(np.min(feed["timestep"]))).run(names, feed)

    def __getattr__(self, name):
        return getattr(self.fast, name)


_cache: Dict[tuple, LoadedModel] = {}
_cache_lock = threading.Lock()


def denoiser_variant(spec: dict, provider: str, precision: str = "auto") -> str:
    """Which denoiser graph of a pixel package runs: 'fp16' on a GPU and 'int8' on the CPU when the package has
    them and precision is 'auto'; 'fp32' otherwise (the exact graph, always present)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        if provider != "CPUExecutionProvider" and spec.get("fp16_file"):
            return "fp16"
        if provider == "CPUExecutionProvider" and spec.get("int8_file"):
            return "int8"
    return "fp32"


def load(model: str, extra_dirs: Iterable[str] = (), providers: Optional[Sequence[str]] = None,
         threads: int = 0, precision: str = "auto") -> LoadedModel:
    """Verify a package (and its autoencoder) and open its ONNX sessions (kept warm: later calls with the same
    files reuse them). precision: 'auto' (the package's fp16 graph on a GPU, its int8 graph on the CPU, where it
    has them) or 'fp32' (the exact graph everywhere)."""
    from . import providers as prov

    pkg = find(model, extra_dirs)
    if pkg.kind == "autoencoder":
        raise ModelPackageError(f"{pkg.path}: {pkg.id!r} is an autoencoder package, a part that latent models "
                                "use, not a model to generate with.")
    verify_files(pkg)
    chosen = list(providers or prov.choose())
    if pkg.interface == "diffusers":
        from .autoencoder import diffusers_autoencoder
        from .diffusers import load_diffusers

        key = (pkg.path, pkg.denoiser_sha256, tuple(chosen), threads)
        with _cache_lock:
            if key not in _cache:
                loaded = load_diffusers(pkg, chosen, threads)
                loaded.autoencoder = diffusers_autoencoder(pkg, loaded.extra)
                _cache[key] = loaded
                _log_provider(pkg, chosen, loaded.provider)
            return _cache[key]
    return open_pixel(pkg, chosen, threads, precision, extra_dirs)


def find_autoencoder(pkg: ModelPackage, extra_dirs: Iterable[str] = ()) -> ModelPackage:
    """The autoencoder package a latent model names: beside the model's folder first, then on the search path."""
    spec = pkg.manifest.get("autoencoder") or {}
    ae_id = spec.get("package")
    if not isinstance(ae_id, str) or not ae_id:
        raise ModelPackageError(f"{pkg.file('manifest.json')}: the 'autoencoder' section names no package.")
    beside = os.path.join(os.path.dirname(pkg.path), ae_id)
    if os.path.isfile(os.path.join(beside, "manifest.json")):
        cand = read_package(beside)
        if cand.id == ae_id and cand.kind == "autoencoder":
            return cand
    for cand in discover(extra_dirs, autoencoders=True):
        if cand.id == ae_id and cand.kind == "autoencoder":
            return cand
    raise ModelPackageError(f"{pkg.file('manifest.json')}: model {pkg.id!r} needs the autoencoder package "
                            f"{ae_id!r}, which is not installed (install its zip like a model, or put its folder "
                            f"beside {os.path.basename(pkg.path)!r}).")


def open_autoencoder(pkg: ModelPackage, chosen: Sequence[str], threads: int, extra_dirs: Iterable[str] = ()):
    """The model's autoencoder: the identity for pixel packages, else its verified autoencoder package opened,
    refused (naming the file) when its factor, channels or decoder differ from what the model declares."""
    from .autoencoder import open_package_autoencoder

    if pkg.kind != "latent":
        return Identity()
    ae_pkg = find_autoencoder(pkg, extra_dirs)
    verify_files(ae_pkg)
    want = pkg.manifest["autoencoder"]
    ae = open_package_autoencoder(ae_pkg, chosen, threads, want)
    shape = pkg.manifest["graphs"]["denoiser"].get("inputs", {}).get("sample", {}).get("shape", [])
    if len(shape) == 4 and isinstance(shape[1], int) and shape[1] != ae.channels:
        raise ModelPackageError(f"{pkg.file(pkg.manifest['graphs']['denoiser']['file'])}: the denoiser takes "
                                f"{shape[1]} channels but its autoencoder {ae_pkg.id!r} gives {ae.channels}.")
    return ae


def base_package(pkg: ModelPackage) -> Optional[ModelPackage]:
    """The package's coarse base model (first stage of the two-stage generation, training/cascade_base.py) as a
    package of its own (same folder, its own manifest), or None."""
    entry = pkg.manifest.get("cascade_base")
    if not entry:
        return None
    sub = entry.get("manifest")
    if not isinstance(sub, dict):
        raise ModelPackageError(f"{pkg.file('manifest.json')}: 'cascade_base' has no manifest.")
    for key in ("id", "files", "graphs", "scheduler", "tile", "conditions"):
        if key not in sub:
            raise ModelPackageError(f"{pkg.file('manifest.json')}: the cascade base's manifest has no {key!r}.")
    for g in sub["graphs"].values():
        if g["file"] not in sub["files"]:
            raise ModelPackageError(f"{pkg.file('manifest.json')}: cascade base graph file {g['file']!r} is not "
                                    "listed under its 'files'.")
    return ModelPackage(pkg.path, sub)


def cascade_factor(pkg: ModelPackage) -> int:
    """The GSD factor between the base model and this one (0: the package has no base model)."""
    return int((pkg.manifest.get("cascade_base") or {}).get("factor", 0))


def load_base(model: str, extra_dirs: Iterable[str] = (), providers: Optional[Sequence[str]] = None,
              threads: int = 0) -> LoadedModel:
    """The coarse base model of package `model`, verified and opened like a package (fp32 graph)."""
    from . import providers as prov

    pkg = base_package(find(model, extra_dirs))
    if pkg is None:
        raise ModelPackageError(f"Model {model!r} has no coarse base model (no 'cascade_base' in its manifest).")
    verify_files(pkg)
    return open_pixel(pkg, list(providers or prov.choose()), threads, "fp32")


def open_pixel(pkg: ModelPackage, chosen: List[str], threads: int, precision: str,
               extra_dirs: Iterable[str] = ()) -> LoadedModel:
    """ONNX sessions of a verified rsgen package, pixel or latent (cached: later calls with the same files reuse
    them)."""
    import onnxruntime as ort

    from . import providers as prov
    from .text import TextEncoder

    g = pkg.manifest["graphs"]
    variant = denoiser_variant(g["denoiser"], chosen[0], precision)
    dn_name = g["denoiser"][{"fp32": "file", "fp16": "fp16_file", "int8": "int8_file"}[variant]]
    dn_file = pkg.file(dn_name)
    key = (pkg.path, pkg.denoiser_sha256, tuple(chosen), threads, variant)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        ae = open_autoencoder(pkg, chosen, threads, extra_dirs)
        tile = int(pkg.manifest["tile"]["size"]) // ae.factor
        dims = [{"batch": b, "height": tile, "width": tile} for b in (1, MAX_BATCH, MAX_BATCH)]
        profile = prov.shape_profile(g["denoiser"]["inputs"], *dims)

        def open_graph(path: str):
            try:
                s = ort.InferenceSession(path, so, providers=prov.with_options(chosen, profile))
            except Exception as exc:  # onnxruntime raises its own exception types
                raise ModelPackageError(f"{path}: ONNX Runtime cannot load this graph ({exc}).") from exc
            check_io(pkg, "denoiser", s)
            return s

        sess = open_graph(dn_file)
        below = float(g["denoiser"].get("int8", {}).get("fp32_below_timestep", 0)) if variant == "int8" else 0.0
        if below > 0:
            sess = SteppedDenoiser(sess, open_graph(pkg.file(g["denoiser"]["file"])), below)
        text = None
        if "text_encoder" in g:
            tfile = pkg.file(g["text_encoder"]["file"])
            tok = pkg.manifest.get("tokenizer", {})
            try:
                text = TextEncoder(tfile, pkg.file(tok.get("vocab", "vocab.txt")),
                                   max_length=int(tok.get("max_length", 64)), providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise ModelPackageError(f"{tfile}: cannot load the text encoder ({exc}).") from exc
            check_io(pkg, "text_encoder", text.session)
        loaded = LoadedModel(pkg, sess, text, sess.get_providers()[0], variant=variant,
                             variant_sha256=pkg.manifest["files"][dn_name]["sha256"],
                             class_guide=_open_class_guide(pkg, text), autoencoder=ae)
        _log_provider(pkg, chosen, loaded.provider)
        _cache[key] = loaded
        return loaded


def _open_class_guide(pkg: ModelPackage, text):
    """The package's class guide (core.engine.classguide), or None. Its classifier is small (about 3 ms per 64 px tile
    and step on a laptop CPU), so it runs on the CPU whatever runs the denoiser."""
    import onnxruntime as ort

    from ..engine.classguide import ClassGuide, ClassGuideSpec

    section = pkg.manifest.get("class_guide")
    if not section:
        return None
    spec = ClassGuideSpec.from_manifest(section)
    if text is None:
        raise ModelPackageError(f"{pkg.file('manifest.json')}: a class guide needs the package's text encoder.")
    path = pkg.file(spec.file)
    if spec.file not in pkg.manifest["files"]:
        raise ModelPackageError(f"{path}: the class guide's graph is not listed under the manifest's files.")
    # its own options: one thread that does not spin between calls, so that it does not hold the cores the
    # denoiser's session wants next (sharing the denoiser's options made every denoiser call ~35 % slower; a 64 px
    # tile at the default 0.44 s instead of 0.36 s with these, 0.28-0.29 s without class guidance)
    gso = ort.SessionOptions()
    gso.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    gso.intra_op_num_threads = 1
    gso.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(path, gso, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelPackageError(f"{path}: ONNX Runtime cannot load the class guide ({exc}).") from exc
    names = {i.name for i in sess.get_inputs()}, {o.name for o in sess.get_outputs()}
    if names != ({"sample", "logsnr", "target"}, {"grad", "probs"}):
        raise ModelPackageError(f"{path}: the class guide's graph must take sample, logsnr and target and give "
                                f"grad and probs (it has {sorted(names[0])} -> {sorted(names[1])}).")
    return ClassGuide(spec, sess, text.embed)


def _log_provider(pkg: ModelPackage, chosen: Sequence[str], actual: str) -> None:
    """The provider really used is logged (and returned in GenerationResult.provider for the dock)."""
    from . import providers as prov

    if actual != chosen[0]:
        prov.log.warning("Model %s: %s was asked for but ONNX Runtime runs it on %s.", pkg.id, chosen[0], actual)
    prov.log.info("Model %s runs on %s (%s).", pkg.id, prov.LABELS.get(actual, actual), actual)
