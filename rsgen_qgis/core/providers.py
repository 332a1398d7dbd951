"""ONNX Runtime execution providers: TensorRT -> CUDA -> CPU, by availability and the user's preference."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple, Union

ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PREFERENCES = {"auto": ORDER, "tensorrt": ORDER, "cuda": ORDER[1:], "cpu": ORDER[2:]}
LABELS = {"TensorrtExecutionProvider": "TensorRT (GPU)", "CUDAExecutionProvider": "CUDA (GPU)",
          "CPUExecutionProvider": "CPU"}


def available() -> List[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose(preference: str = "auto", have: Optional[Sequence[str]] = None) -> List[str]:
    """Providers to try, best first, limited to what this onnxruntime build has; CPU always last."""
    pref = (preference or "auto").lower()
    if pref not in PREFERENCES:
        from .errors import ParameterError

        raise ParameterError(f"Unknown execution provider preference {preference!r}; "
                             f"choose one of: {', '.join(PREFERENCES)}.")
    have = available() if have is None else list(have)
    out = [p for p in PREFERENCES[pref] if p in have]
    return out or ["CPUExecutionProvider"]


def cache_dir() -> str:
    """User cache folder for TensorRT engines and timing caches (so a pan does not rebuild engines)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "rsgen_qgis", "trt")
    os.makedirs(path, exist_ok=True)
    return path


def with_options(providers: Sequence[str]) -> List[Union[str, Tuple[str, dict]]]:
    """Attach provider options: TensorRT engine/timing caches and fp16; CUDA default stream settings."""
    out: List[Union[str, Tuple[str, dict]]] = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            c = cache_dir()
            out.append((p, {"trt_engine_cache_enable": True, "trt_engine_cache_path": c,
                            "trt_timing_cache_enable": True, "trt_timing_cache_path": c,
                            "trt_fp16_enable": True}))
        else:
            out.append(p)
    return out
