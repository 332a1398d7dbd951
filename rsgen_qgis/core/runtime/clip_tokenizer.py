"""Pure-Python CLIP tokenizer (byte-level BPE), so latent packages run without transformers or tokenizers.

It reproduces transformers' CLIPTokenizer (5.x, backed by the `tokenizers` library), which is what diffusers'
Stable Diffusion pipelines use to make the prompt's token ids:
- special tokens written literally in the prompt (<|startoftext|>, <|endoftext|>) are kept whole, matched on
  the raw text before normalisation;
- normaliser: NFC, every run of whitespace -> one space, lowercase (character by character, as Rust's
  char::to_lowercase: no Greek final-sigma rule);
- pre-tokeniser: the CLIP pattern ('s 't 're 've 'm 'll 'd | letters+ | one digit | other+), whitespace
  dropped, then byte-level mapping of each piece's UTF-8 bytes;
- BPE with merges by rank, '</w>' appended to a word's last symbol; unknown symbols become the unk token;
- <bos> ids <eos>, truncated to max_length, padded with the pad token (SD 1.x: <|endoftext|>, SD 2.x: '!').
The files are the package's vocab.json (token -> id) and merges.txt ('a b' per line after a '#version' line).
"""
from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character table (CLIP uses the same)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _kind(ch: str) -> str:
    """'L' letter, 'N' number, 'S' whitespace, 'O' other: the classes the CLIP pattern distinguishes."""
    if ch.isspace():
        return "S"
    cat = unicodedata.category(ch)
    return cat[0] if cat[0] in "LN" else "O"


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    out: List[str] = []
    prev_space = False
    for ch in text:
        if ch.isspace():
            if not prev_space:
                out.append(" ")
            prev_space = True
            continue
        prev_space = False
        out.append(ch.lower())
    return "".join(out)


def pre_tokenize(text: str) -> List[str]:
    """The pieces re.findall would give with CLIP's pattern (alternatives tried in order at each position).

    The pattern's own <|startoftext|>/<|endoftext|> alternatives never fire in the `tokenizers` pipeline (a
    special token is only recognised verbatim in the raw text, see token_ids); a lowercased '<|ENDOFTEXT|>'
    becomes '<|', 'endoftext', '|>' there, and here too."""
    pieces: List[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        k = _kind(ch)
        if k == "S":
            i += 1
            continue
        if ch == "'":
            hit = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
            if hit:
                pieces.append(hit)
                i += len(hit)
                continue
        if k == "N":
            pieces.append(ch)
            i += 1
            continue
        j = i + 1
        while j < n and _kind(text[j]) == k:
            j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def read_merges(path: str) -> List[Tuple[str, str]]:
    out: List[Tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.rstrip("\n").rstrip("\r")
            if (i == 0 and line.startswith("#version")) or not line.strip():
                continue
            a, _, b = line.partition(" ")
            out.append((a, b))
    return out


class CLIPTokenizer:
    """Reads vocab.json + merges.txt; `encode` gives int64 [B, max_length] ids as the SD pipelines feed them."""

    def __init__(self, vocab_path: str, merges_path: str, *, max_length: int = 77, bos: str = "<|startoftext|>",
                 eos: str = "<|endoftext|>", pad: str = "<|endoftext|>", unk: str = "<|endoftext|>") -> None:
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab: Dict[str, int] = json.load(f)
        if not isinstance(self.vocab, dict):
            raise ValueError(f"{vocab_path}: not a JSON object of token -> id.")
        for name, tok in (("bos", bos), ("eos", eos), ("pad", pad), ("unk", unk)):
            if tok not in self.vocab:
                raise ValueError(f"{vocab_path}: the vocabulary lacks the {name} token {tok!r}.")
        self.ranks = {pair: i for i, pair in enumerate(read_merges(merges_path))}
        self.max_length = int(max_length)
        self.bos_id, self.eos_id = self.vocab[bos], self.vocab[eos]
        self.pad_id, self.unk_id = self.vocab[pad], self.vocab[unk]
        self._specials = {t: self.vocab[t] for t in {bos, eos, pad, unk} | set(SPECIALS) if t in self.vocab}
        self._b2u = bytes_to_unicode()
        self._cache: Dict[str, List[int]] = {}

    def _bpe(self, piece: str) -> List[int]:
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        chars = [self._b2u[b] for b in piece.encode("utf-8")]
        word = chars[:-1] + [chars[-1] + "</w>"]
        while len(word) > 1:
            best: Optional[Tuple[int, int]] = None
            for i in range(len(word) - 1):
                r = self.ranks.get((word[i], word[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            a, b = word[best[1]], word[best[1] + 1]
            merged: List[str] = []
            i = 0
            while i < len(word):  # merge every occurrence of the pair, left to right
                if i < len(word) - 1 and word[i] == a and word[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self.vocab.get(w, self.unk_id) for w in word]
        if len(self._cache) < 20000:
            self._cache[piece] = ids
        return ids

    def token_ids(self, text: str) -> List[int]:
        """Ids of one text without <bos>/<eos> and without truncation."""
        ids: List[int] = []
        rest = text
        while rest:
            pos, tok = min(((rest.find(t), t) for t in self._specials if t in rest), default=(-1, ""))
            head = rest if pos < 0 else rest[:pos]
            for piece in pre_tokenize(normalize(head)):
                ids.extend(self._bpe(piece))  # a special token's text after normalisation is plain text
            if pos < 0:
                break
            ids.append(self._specials[tok])
            rest = rest[pos + len(tok):]
        return ids

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """int64 [B, max_length]: <bos> ids[:max_length-2] <eos> then pad (padding='max_length', truncation)."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        out = np.full((len(texts), self.max_length), self.pad_id, np.int64)
        for i, t in enumerate(texts):
            row = [self.bos_id] + self.token_ids(t)[:self.max_length - 2] + [self.eos_id]
            out[i, :len(row)] = row
        return out
