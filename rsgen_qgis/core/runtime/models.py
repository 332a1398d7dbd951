"""Model packages: discovery, verification against the manifest, and ONNX sessions.

A package is a folder with manifest.json, ONNX graphs and small text files (../shared/DESIGN.md). We read
ONNX and JSON only and never unpickle anything. A package whose files are missing, whose sha256 differs, or
whose graphs do not have the inputs/outputs the manifest promises is refused with a message naming the file.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import ModelPackageError
from .autoencoder import Identity
from .manifest_schema import FORMAT, REQUIRED_GRAPHS, check_manifest  # noqa: F401  (FORMAT, REQUIRED_GRAPHS: API)
from .package_files import MANIFEST, package_file, refuse_links, sha256_file  # noqa: F401  (sha256_file: API)
from ..request import PRECISIONS

log = logging.getLogger("rsgen_qgis")
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
        """The path of a file of this package, for every file the run time opens: only a listed file inside the
        package folder whose sha256 matches (core.runtime.package_files); the manifest itself for
        'manifest.json'."""
        if name == MANIFEST:
            return os.path.join(self.path, MANIFEST)
        return package_file(self.path, self.manifest["files"], name)

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
    check_manifest(m, mpath)  # types and ranges of everything read later, and every named file listed
    m.setdefault("graphs", {})
    return ModelPackage(os.path.abspath(path), m)


def verify_files(pkg: ModelPackage) -> None:
    """Check every listed file: a plain file inside the package with the recorded size and sha256 (cached by path,
    size, mtime); the same check pkg.file() makes when the run time opens one. A link anywhere in the folder is
    refused too: a file the manifest does not list may still be opened by a graph (ONNX external data)."""
    for name in pkg.manifest["files"]:
        pkg.file(name)
    refuse_links(pkg.path)


def search_dirs(extra_dirs: Iterable[str] = ()) -> List[str]:
    dirs = list(extra_dirs) + [d for d in os.environ.get(ENV_DIRS, "").split(os.pathsep) if d]
    dirs += list(BUNDLED_DIRS)
    out = []
    for d in dirs:
        d = os.path.abspath(os.path.expanduser(d))
        if d not in out and os.path.isdir(d):
            out.append(d)
    return out


def _claimed_id(folder: str) -> str:
    """The id a package that could not be read claims (its manifest's id if that much is readable, else its
    folder's name): a broken package must not silently give way to another of the same id (find)."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            m = json.load(f)
        if isinstance(m, dict) and isinstance(m.get("id"), str):
            return m["id"]
    except (OSError, ValueError):
        pass
    return os.path.basename(folder)


_reported: set = set()


def scan(extra_dirs: Iterable[str] = ()) -> List[tuple]:
    """(folder, package or None, claimed id, problem) for every package folder on the search path, in order.
    A broken package's problem is logged once per process (discovery runs at every dialog refresh)."""
    out = []
    for d in search_dirs(extra_dirs):
        try:
            cands = [d] if os.path.isfile(os.path.join(d, MANIFEST)) else \
                [os.path.join(d, s) for s in sorted(os.listdir(d))
                 if not s.startswith(".") and os.path.isfile(os.path.join(d, s, MANIFEST))]
        except OSError as exc:
            out.append((d, None, None, f"{d}: cannot list this model folder ({exc.strerror or exc})."))
            continue
        for c in cands:
            try:
                pkg = read_package(c)
            except ModelPackageError as exc:
                out.append((c, None, _claimed_id(c), str(exc)))
                continue
            except Exception as exc:  # a manifest the schema let through but still breaks a reader: skip it too
                out.append((c, None, _claimed_id(c), f"{c}: cannot read this model package ({exc!r})."))
                continue
            out.append((c, pkg, pkg.id, None))
    for _, _, _, problem in out:
        if problem and problem not in _reported:
            _reported.add(problem)
            log.warning("Model package skipped: %s", problem)
    return out


def discover(extra_dirs: Iterable[str] = (), errors: Optional[list] = None,
             autoencoders: bool = False) -> List[ModelPackage]:
    """Packages found in the given folders, $RSGEN_MODEL_DIRS and the bundled models/ (first id wins).

    A folder may itself be a package or contain packages. A broken package (unreadable, or a manifest that fails
    the schema) is skipped, logged once, and its message appended to `errors` when a list is given; it never
    stops the others. Autoencoder packages are parts of models, not models to generate with: listed only with
    autoencoders=True."""
    found: Dict[str, ModelPackage] = {}
    for _, pkg, _, problem in scan(extra_dirs):
        if pkg is None:
            if errors is not None:
                errors.append(problem)
            continue
        if pkg.kind == "autoencoder" and not autoencoders:
            continue
        found.setdefault(pkg.id, pkg)
    return list(found.values())


def find(model: str, extra_dirs: Iterable[str] = ()) -> ModelPackage:
    """A package by id or by folder path. The first package on the search path with that id is the one chosen;
    if that one is broken, it is refused with its problem, never silently replaced by a later one."""
    if os.path.isdir(model):
        return read_package(model)
    found = scan(extra_dirs)  # autoencoders too: asked for by id, load() says what an autoencoder is
    for i, (folder, pkg, claimed, problem) in enumerate(found):
        if claimed != model:
            continue
        if pkg is not None:
            return pkg
        later = next((p.path for _, p, c, _ in found[i + 1:] if p is not None and c == model), None)
        other = (f" The next package with this id, {later}, was not used in its place: fix or remove the broken "
                 f"one (or leave its folder out of the model folders) to use it.") if later else ""
        raise ModelPackageError(f"Model {model!r}: the package chosen for this id is {folder}, the first with this "
                                f"id on the model search path (the folders you add come before the bundled "
                                f"models), and it is broken: {problem}{other}")
    pkgs = [p for _, p, _, _ in found if p is not None and p.kind != "autoencoder"]
    errors = [problem for _, p, _, problem in found if p is None]
    known = ", ".join(dict.fromkeys(p.id for p in pkgs)) or "none"
    hint = f" Problems seen: {'; '.join(errors)}" if errors else ""
    if not pkgs and not errors:  # e.g. the plugin from plugins.qgis.org, which comes without its model
        hint = (" Install a model package (such as rsgen-base.zip): the dock's model … menu, or `python -m "
                "rsgen_qgis install-model ZIP --dest DIR` and RSGEN_MODEL_DIRS=DIR.")
    raise ModelPackageError(f"Model {model!r} not found. Installed models: {known}. Searched: "
                            f"{', '.join(search_dirs(extra_dirs)) or 'no folder'}.{hint}")


def check_io(pkg: ModelPackage, graph: str, sess, path: Optional[str] = None) -> None:
    """The graph's inputs and outputs against what the manifest declares; `path`, the graph's file for messages
    (default: the package's own file; a text encoder taken from another package is in that package)."""
    spec = pkg.manifest["graphs"][graph]
    path = path or pkg.file(spec["file"])
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
    weak: Optional[object] = None  # the package's weak denoiser for autoguidance (core.engine.autoguide), or None
    weak_sha256: str = ""

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


def open_autoencoder(pkg: ModelPackage, chosen: Sequence[str], threads: int, extra_dirs: Iterable[str] = (),
                     precision: str = "auto"):
    """The model's autoencoder: the identity for pixel packages, else its verified autoencoder package opened,
    refused (naming the file) when its factor, channels or decoder differ from what the model declares.
    precision as load()'s: "auto" runs the autoencoder's int8 decoder on the CPU where it has one."""
    from .autoencoder import open_package_autoencoder
    from .references import find_autoencoder

    if pkg.kind != "latent":
        return Identity()
    ae_pkg = find_autoencoder(pkg, extra_dirs)
    verify_files(ae_pkg)
    want = pkg.manifest["autoencoder"]
    ae = open_package_autoencoder(ae_pkg, chosen, threads, want, precision)
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
        if g["file"] not in sub["files"] and "package" not in g:  # (a text encoder named in another package)
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
    return open_pixel(pkg, list(providers or prov.choose()), threads, "fp32", extra_dirs)


def open_pixel(pkg: ModelPackage, chosen: List[str], threads: int, precision: str,
               extra_dirs: Iterable[str] = ()) -> LoadedModel:
    """ONNX sessions of a verified rsgen package, pixel or latent (cached: later calls with the same files reuse
    them)."""
    import onnxruntime as ort

    from . import providers as prov
    from .references import open_text_encoder

    g = pkg.manifest["graphs"]
    variant = denoiser_variant(g["denoiser"], chosen[0], precision)
    dn_name = g["denoiser"][{"fp32": "file", "fp16": "fp16_file", "int8": "int8_file"}[variant]]
    dn_file = pkg.file(dn_name)
    weak_spec = g.get("weak_denoiser")
    weak_sha = pkg.manifest["files"][weak_spec["file"]]["sha256"] if weak_spec else ""
    key = (pkg.path, pkg.denoiser_sha256, weak_sha, tuple(chosen), threads, variant, precision)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        ae = open_autoencoder(pkg, chosen, threads, extra_dirs, precision)
        tile = int(pkg.manifest["tile"]["size"]) // ae.factor
        dims = [{"batch": b, "height": tile, "width": tile} for b in (1, MAX_BATCH, MAX_BATCH)]
        profile = prov.shape_profile(g["denoiser"]["inputs"], *dims)

        def open_graph(path: str, graph: str = "denoiser"):
            try:
                s = ort.InferenceSession(path, so, providers=prov.with_options(chosen, profile))
            except Exception as exc:  # onnxruntime raises its own exception types
                raise ModelPackageError(f"{path}: ONNX Runtime cannot load this graph ({exc}).") from exc
            check_io(pkg, graph, s)
            return s

        sess = open_graph(dn_file)
        below = float(g["denoiser"].get("int8", {}).get("fp32_below_timestep", 0)) if variant == "int8" else 0.0
        if below > 0:
            sess = SteppedDenoiser(sess, open_graph(pkg.file(g["denoiser"]["file"])), below)
        # the weak model (one graph, as the package ships it, whatever the precision) takes the denoiser's inputs
        weak = open_graph(pkg.file(weak_spec["file"]), "weak_denoiser") if weak_spec else None
        text = open_text_encoder(pkg, extra_dirs)  # its own, or the one it names in another package
        loaded = LoadedModel(pkg, sess, text, sess.get_providers()[0], variant=variant,
                             variant_sha256=pkg.manifest["files"][dn_name]["sha256"],
                             class_guide=_open_class_guide(pkg, text), autoencoder=ae, weak=weak,
                             weak_sha256=weak_sha)
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
    path = pkg.file(spec.file)  # listed, inside the package, sha256 checked
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
