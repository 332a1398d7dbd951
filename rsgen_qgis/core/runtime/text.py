"""Prompt -> embedding at run time: pure-Python WordPiece tokenizer + the exported ONNX sentence encoder.

numpy and onnxruntime only (no torch, transformers or tokenizers), so the plugin stays light inside QGIS.
The graph already does mean pooling and L2 normalisation (training/text_encoder.py), so its output is the
vector the denoiser was conditioned on during training.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np

from .tokenizer import WordPieceTokenizer


class TextEncoder:
    """Embeds prompts; remembers the last few so re-running the same prompt (tiles, retries) costs nothing."""

    def __init__(self, onnx_path: str, vocab_path: str, max_length: int = 64,
                 providers: Optional[Sequence[str]] = None, cache_size: int = 64) -> None:
        import onnxruntime as ort

        self.tokenizer = WordPieceTokenizer(vocab_path)
        self.max_length = int(max_length)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # a 6-layer encoder on a dozen tokens: more threads only add overhead next to the denoiser
        so.intra_op_num_threads = 2
        self.session = ort.InferenceSession(onnx_path, so, providers=list(providers or ["CPUExecutionProvider"]))
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        dim = self.session.get_outputs()[0].shape[-1]
        self.dim = dim if isinstance(dim, int) else int(self._run("").shape[-1])

    def _run(self, text: str) -> np.ndarray:
        ids, mask, types = self.tokenizer.encode([text], self.max_length)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        out = self.session.run(["embedding"], {k: v for k, v in feed.items() if k in self._inputs})[0]
        return np.asarray(out[0], np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [B, D] unit vectors, one per text, in order.

        Each text runs alone (batch 1, no padding): the int8 graph quantises activations with one scale per
        tensor, so batching texts together would make a prompt's vector depend on its neighbours.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of prompts, not a single string")
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            with self._lock:
                v = self._cache.get(t)
                if v is not None:
                    self._cache.move_to_end(t)
            if v is None:
                v = self._run(t)
                v.flags.writeable = False
                with self._lock:
                    self._cache[t] = v
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
            out[i] = v
        return out
