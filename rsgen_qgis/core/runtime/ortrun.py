"""ONNX Runtime sessions for one graph of a package, and IO binding so GPU runs skip needless host copies.

On CUDA/TensorRT a `Graph` binds its inputs and outputs through an IOBinding: tensors that feed another graph
(the prompt embedding used at every step, ControlNet residuals going into the UNet) stay on the device as
OrtValues; only what numpy needs comes back to the host. On CPU it calls session.run (IO binding gains nothing
there). The binding path can be forced on CPU (`io_binding=True`) so tests exercise it without a GPU.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from . import providers as prov
from ..errors import ModelPackageError

log = logging.getLogger("rsgen_qgis")
Value = Union[np.ndarray, object]  # numpy array or onnxruntime.OrtValue


def session(path: str, chosen: Sequence[str], profile: Optional[Dict[str, str]] = None, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(path, so, providers=prov.with_options(chosen, profile))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelPackageError(f"{path}: ONNX Runtime cannot load this graph ({exc}).") from exc


class Graph:
    """A session plus where its tensors live: 'cuda' (IO binding, device outputs on request) or 'cpu'."""

    def __init__(self, sess, io_binding: Optional[bool] = None) -> None:
        self.session = sess
        self.provider = sess.get_providers()[0]
        self.device = "cuda" if self.provider in prov.GPU else "cpu"
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)
        self.inputs = [i.name for i in sess.get_inputs()]
        self.outputs = [o.name for o in sess.get_outputs()]

    def to_device(self, a: np.ndarray) -> Value:
        """An input used many times (the prompt embedding): uploaded once when the graph runs on a GPU."""
        if self.device != "cuda":
            return np.ascontiguousarray(a)
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", 0)

    def run(self, feeds: Dict[str, Value], outputs: Optional[Iterable[str]] = None,
            keep: Iterable[str] = ()) -> Dict[str, Value]:
        """Outputs by name; those in `keep` stay OrtValues on the device (GPU binding only), the rest are numpy."""
        names: List[str] = list(outputs or self.outputs)
        if not self.io_binding:
            plain = {k: (v.numpy() if hasattr(v, "numpy") and not isinstance(v, np.ndarray) else v)
                     for k, v in feeds.items()}
            return dict(zip(names, self.session.run(names, plain)))
        keep = set(keep)
        b = self.session.io_binding()
        for k, v in feeds.items():
            if isinstance(v, np.ndarray):
                b.bind_cpu_input(k, np.ascontiguousarray(v))
            else:
                b.bind_ortvalue_input(k, v)
        for n in names:
            b.bind_output(n, self.device if n in keep else "cpu")
        self.session.run_with_iobinding(b)
        vals = b.get_outputs()
        return {n: (v if n in keep and self.device == "cuda" else v.numpy()) for n, v in zip(names, vals)}


def host(v: Value) -> np.ndarray:
    return v if isinstance(v, np.ndarray) else v.numpy()
