"""The pure-Python CLIP tokenizer equals transformers' CLIPTokenizer (tokenizers-backed, as diffusers uses)."""
import os

import numpy as np
import pytest

from tiny_diffusers import hf_tokenizer, write_clip_vocab

from rsgen_qgis.core.runtime.clip_tokenizer import CLIPTokenizer

PROMPTS = ["a satellite image of farmland with fields and roads", "Dense  RESIDENTIAL area,\tby a river!!",
           "the city's old town: 2024, ÉTÉ, naïve café", "<|endoftext|>x<|startoftext|> <|ENDOFTEXT|>",
           "ΣΑΣ straße İstanbul 東京 🙂 it's we'll 'tis ''quoted''", "", "   ", "harbour " * 60,
           "runway_07/25 @ 3.5m GSD (clouds<10%)"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("clipvocab"))
    write_clip_vocab(d)
    return d


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])  # SD 1.x pads with <|endoftext|>, SD 2.x with '!'
def test_equal_to_transformers(vocab, pad):
    hf = hf_tokenizer(vocab, pad=pad)
    ours = CLIPTokenizer(os.path.join(vocab, "vocab.json"), os.path.join(vocab, "merges.txt"), pad=pad)
    got = ours.encode(PROMPTS)
    for p, row in zip(PROMPTS, got):
        want = hf(p, padding="max_length", max_length=77, truncation=True)["input_ids"]
        assert row.tolist() == want, p
    assert got.dtype == np.int64 and got.shape == (len(PROMPTS), 77)


def test_merges_are_used(vocab):
    ours = CLIPTokenizer(os.path.join(vocab, "vocab.json"), os.path.join(vocab, "merges.txt"))
    ids = ours.token_ids("satellite")
    assert 1 <= len(ids) < len("satellite")  # learnt merges shorten common words


def test_bad_vocab(tmp_path, vocab):
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(ValueError, match="bos token"):
        CLIPTokenizer(str(tmp_path / "vocab.json"), os.path.join(vocab, "merges.txt"))
