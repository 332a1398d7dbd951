"""Pure-Python BERT WordPiece tokenizer (uncased), so the run-time path needs neither `tokenizers` nor torch.

It reproduces the Hugging Face fast tokenizer defined by the `tokenizer.json` of
sentence-transformers/all-MiniLM-L6-v2 (BertNormalizer + BertPreTokenizer + WordPiece + [CLS] A [SEP]),
the tokenizer that model was trained and is used with: a different split would shift prompt embeddings
away from what the encoder (and so the denoiser) expects. Training precomputes caption embeddings through
this same module (training/text_encoder.py). Where the old pure-Python `BertTokenizer` and the fast one
disagree, we follow the fast one:
- control, format, private-use and surrogate characters are dropped (not tab / newline / CR); unassigned
  code points are kept (and become [UNK]);
- lowercasing is character by character (no Greek final-sigma rule);
- special tokens written literally in the text ("[MASK]") are kept whole, matched before normalisation;
- the fast tokenizer's own CJK range and older Unicode categories (_LEGACY_* below).
Checked on every code point against tokenizers 0.23 under Python 3.11 (Unicode 14): what still differs is
~50 code points unassigned in Python's tables (Rust lowercases them with newer data) and one NFD
decomposition, all in scripts absent from the vocabulary, i.e. [UNK] either way in practice.
"""
from __future__ import annotations

import bisect
import re
import unicodedata
from typing import Dict, List, Sequence, Tuple

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_vocab(path: str) -> Dict[str, int]:
    """vocab.txt: one token per line, the id is the line number (as BERT's own loader does)."""
    vocab: Dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            tok = line.rstrip("\n").rstrip("\r")
            vocab.setdefault(tok, i)
    return vocab


# Code points that Python's Unicode tables (14.0 in Python 3.11) call Mn, Cf or P*, but the older tables
# compiled into the `tokenizers` library do not (scripts and marks added since): the fast tokenizer treats
# them as plain letters, so we do too; and three the other way round. Found by scanning every code point
# against the fast tokenizer (tests/test_text.py keeps a sample of them).
_LEGACY_PLAIN = """
61d 7fd 890-891 898-89f 8ca-8e2 9fd-9fe a76 afa-aff b55 c04 c3c c77 c84 d00 d3b-d3c d81 eba 180f
1885-1886 1abf-1ace 1b7d-1b7e 1df6-1dfb 2e43-2e4f 2e52-2e5d a82c a8c5 a8ff a9bd 10d24-10d27 10eab-10ead
10f46-10f50 10f55-10f59 10f82-10f89 11070 11073-11074 110c2 110cd 111c9 111cf 1123e 1133b 11438-1143f
11442-11444 11446 1144b-1144f 1145a-1145b 1145d-1145e 11660-1166c 116b9 1182f-11837 11839-1183b
1193b-1193c 1193e 11943-11946 119d4-119d7 119da-119db 119e0 119e2 11a01-11a0a 11a33-11a38 11a3b-11a47
11a51-11a56 11a59-11a5b 11a8a-11a96 11a98-11a9c 11a9e-11aa2 11c30-11c36 11c38-11c3d 11c3f 11c41-11c45
11c70-11c71 11c92-11ca7 11caa-11cb0 11cb2-11cb3 11cb5-11cb6 11d31-11d36 11d3a 11d3c-11d3d 11d3f-11d45
11d47 11d90-11d91 11d95 11d97 11ef3-11ef4 11ef7-11ef8 11fff 12ff1-12ff2 13430-13438 16e97-16e9a 16f4f
16fe2 16fe4 1cf00-1cf2d 1cf30-1cf46 1e000-1e006 1e008-1e018 1e01b-1e021 1e023-1e024 1e026-1e02a
1e130-1e136 1e2ae 1e2ec-1e2ef 1e944-1e94a 1e95e-1e95f
"""
_LEGACY_PUNCT = frozenset({0x166D, 0x111C9})   # So / Mn now, Po before
_LEGACY_MN = frozenset({0x1734})   # Mc since Unicode 14, Mn before


def _parse_ranges(text: str) -> Tuple[List[int], List[int]]:
    lo: List[int] = []
    hi: List[int] = []
    for item in text.split():
        a, _, b = item.partition("-")
        lo.append(int(a, 16))
        hi.append(int(b or a, 16))
    return lo, hi


_PLAIN_LO, _PLAIN_HI = _parse_ranges(_LEGACY_PLAIN)


def _legacy_plain(cp: int) -> bool:
    i = bisect.bisect_right(_PLAIN_LO, cp) - 1
    return i >= 0 and cp <= _PLAIN_HI[i]


def _is_chinese_char(cp: int) -> bool:
    """CJK ideograph blocks, split into one-character words (CJK text has no spaces).

    0x2B920, not 0x2B820, starts the fifth range: that is what the fast tokenizer has.
    """
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_punctuation(ch: str) -> bool:
    """ASCII symbols like '$', '^', '`' count as punctuation for BERT even though Unicode says Sm/Sk."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    if cp < 128:
        return False
    if unicodedata.category(ch).startswith("P"):
        return not _legacy_plain(cp)
    return cp in _LEGACY_PUNCT


def _is_dropped(ch: str) -> bool:
    """Characters the normaliser deletes: NUL, U+FFFD and control, format, private-use, surrogate chars."""
    if ch in "\t\n\r":
        return False
    cat = unicodedata.category(ch)
    if cat == "Cf":
        return not _legacy_plain(ord(ch))
    return ch == "\ufffd" or cat in ("Cc", "Co", "Cs")


def _is_accent(ch: str) -> bool:
    """Non-spacing marks, which accent stripping removes after NFD."""
    if unicodedata.category(ch) == "Mn":
        return not _legacy_plain(ord(ch))
    return ord(ch) in _LEGACY_MN


def normalize(text: str) -> str:
    """BertNormalizer: clean text, space out CJK ideographs, strip accents (NFD minus Mn), lowercase."""
    out: List[str] = []
    for ch in text:
        if ch.isascii():  # fast path; ASCII controls other than tab/LF/CR are dropped
            if ch in " \t\n\r":
                out.append(" ")
            elif " " <= ch < "\x7f":
                out.append(ch)
            continue
        if _is_dropped(ch):
            continue
        if ch.isspace():
            out.append(" ")
        elif _is_chinese_char(ord(ch)):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    s = unicodedata.normalize("NFD", "".join(out))
    # per-character lower(), like Rust's char::to_lowercase: str.lower() would apply the final-sigma rule
    return "".join(c.lower() for c in s if c.isascii() or not _is_accent(c))


def pre_tokenize(text: str) -> List[str]:
    """BertPreTokenizer: split on whitespace, and make every punctuation character a word of its own."""
    words: List[str] = []
    for chunk in text.split():
        start = 0
        for i, ch in enumerate(chunk):
            if _is_punctuation(ch):
                if i > start:
                    words.append(chunk[start:i])
                words.append(ch)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


class WordPieceTokenizer:
    """Uncased BERT tokenizer reading a vocab.txt; `encode` gives the three int64 arrays a BertModel takes."""

    def __init__(self, vocab_path: str, max_input_chars_per_word: int = 100) -> None:
        self.vocab = load_vocab(vocab_path)
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]") if t not in self.vocab]
        if missing:
            raise ValueError(f"{vocab_path}: the vocabulary lacks {', '.join(missing)}; is it a BERT vocab.txt?")
        self.max_input_chars_per_word = max_input_chars_per_word
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.pad_id = self.vocab["[PAD]"]
        specials = [t for t in SPECIAL_TOKENS if t in self.vocab]
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in specials) + ")")
        self._word_cache: Dict[str, List[int]] = {}

    def _wordpiece(self, word: str) -> List[int]:
        """Greedy longest-match-first; a word with any unmatched piece becomes a single [UNK]."""
        hit = self._word_cache.get(word)
        if hit is not None:
            return hit
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_id]
        ids: List[int] = []
        start, n = 0, len(word)
        while start < n:
            end, cur = n, None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                cur = self.vocab.get(piece)
                if cur is not None:
                    break
                end -= 1
            if cur is None:
                ids = [self.unk_id]
                break
            ids.append(cur)
            start = end
        if len(self._word_cache) < 50000:
            self._word_cache[word] = ids
        return ids

    def token_ids(self, text: str) -> List[int]:
        """Ids of one text without [CLS]/[SEP] and without truncation."""
        ids: List[int] = []
        for part in self._special_re.split(text):
            if not part:
                continue
            if part in self.vocab and part in SPECIAL_TOKENS:
                ids.append(self.vocab[part])
                continue
            for word in pre_tokenize(normalize(part)):
                ids.extend(self._wordpiece(word))
        return ids

    def tokenize(self, text: str) -> List[str]:
        """Token strings (for debugging and tests)."""
        inv = {i: t for t, i in self.vocab.items()}
        return [inv[i] for i in self.token_ids(text)]

    def encode(self, texts: Sequence[str], max_length: int = 64) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[CLS] ids [SEP], truncated to max_length, right-padded to the longest row of the batch.

        Returns (input_ids, attention_mask, token_type_ids), each int64 [B, L].
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        if max_length < 2:
            raise ValueError("max_length must leave room for [CLS] and [SEP] (>= 2)")
        rows = [[self.cls_id] + self.token_ids(t)[:max_length - 2] + [self.sep_id] for t in texts]
        width = max((len(r) for r in rows), default=2)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return ids, mask, np.zeros_like(ids)
