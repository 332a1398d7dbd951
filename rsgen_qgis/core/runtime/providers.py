"""ONNX Runtime execution providers: TensorRT -> CUDA -> CPU, by availability and the user's preference.

`choose` gives the fallback order; `with_options` attaches provider options: TensorRT builds engines once per
(graph, shape profile) and keeps them, with its timing cache, in the user cache folder
(~/.cache/rsgen_qgis/trt or $XDG_CACHE_HOME/rsgen_qgis/trt), and every graph gets an explicit min/opt/max shape
profile covering all window batches of a request, so panning the map (new extents, same tile size) reuses
the engines instead of rebuilding them. `used` names the provider a session actually runs on (ONNX Runtime
silently falls back to CPU when a GPU provider fails to initialise), which the dock shows and the log records.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PREFERENCES = {"auto": ORDER, "tensorrt": ORDER, "cuda": ORDER[1:], "cpu": ORDER[2:]}
LABELS = {"TensorrtExecutionProvider": "TensorRT (GPU)", "CUDAExecutionProvider": "CUDA (GPU)",
          "CPUExecutionProvider": "CPU"}
GPU = frozenset(ORDER[:2])
log = logging.getLogger("rsgen_qgis")


def available() -> List[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose(preference: str = "auto", have: Optional[Sequence[str]] = None) -> List[str]:
    """Providers to try, best first, limited to what this onnxruntime build has; CPU always last."""
    pref = (preference or "auto").lower()
    if pref not in PREFERENCES:
        from ..errors import ParameterError

        raise ParameterError(f"Unknown execution provider preference {preference!r}; "
                             f"choose one of: {', '.join(PREFERENCES)}.")
    have = available() if have is None else list(have)
    out = [p for p in PREFERENCES[pref] if p in have]
    if out[:1] != list(PREFERENCES[pref][:1]) and pref != "auto":
        log.warning("Execution provider %r was asked for but this onnxruntime has only %s; using %s.", pref,
                    ", ".join(have) or "none", out[0] if out else "CPUExecutionProvider")
    return out or ["CPUExecutionProvider"]


def is_gpu(providers: Sequence[str]) -> bool:
    return bool(providers) and providers[0] in GPU


def cache_dir() -> str:
    """User cache folder for TensorRT engines and timing caches (so a pan does not rebuild engines)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "rsgen_qgis", "trt")
    os.makedirs(path, exist_ok=True)
    return path


Dims = Mapping[str, int]


def resolve_dim(d, values: Dims) -> int:
    """A manifest shape entry: an int, a symbol ('batch'), or a symbol divided by an int ('height/2')."""
    if isinstance(d, int):
        return d
    name, _, div = str(d).partition("/")
    if name not in values:
        raise KeyError(name)
    return values[name] // int(div or 1)


def shape_profile(inputs: Mapping[str, dict], lo: Dims, opt: Dims, hi: Dims) -> Dict[str, str]:
    """TensorRT min/opt/max profile strings ('name:1x4x64x64,...') from a manifest graph's input specs and
    values for its symbolic dims."""
    out = {}
    try:
        for key, values in (("trt_profile_min_shapes", lo), ("trt_profile_opt_shapes", opt),
                            ("trt_profile_max_shapes", hi)):
            out[key] = ",".join(f"{n}:" + "x".join(str(resolve_dim(d, values)) for d in spec["shape"])
                                for n, spec in inputs.items())
    except (KeyError, ValueError) as exc:  # a dim this code cannot size: let TensorRT infer (no profile)
        log.warning("No TensorRT shape profile for inputs %s (unknown dimension %s).", ", ".join(inputs), exc)
        return {}
    return out


def with_options(providers: Sequence[str], profile: Optional[Dict[str, str]] = None,
                 fp16: bool = True) -> List[Union[str, Tuple[str, dict]]]:
    """Attach provider options: TensorRT engine/timing caches, shape profile and fp16 (CUDA and CPU keep
    ONNX Runtime's defaults; CUDA's exhaustive cuDNN search pays off with the fixed tile shapes)."""
    out: List[Union[str, Tuple[str, dict]]] = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            c = cache_dir()
            opts = {"trt_engine_cache_enable": True, "trt_engine_cache_path": c,
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": c,
                    "trt_fp16_enable": bool(fp16), "trt_builder_optimization_level": 3}
            opts.update(profile or {})
            out.append((p, opts))
        else:
            out.append(p)
    return out

