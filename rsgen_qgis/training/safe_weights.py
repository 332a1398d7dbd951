"""Torch weight files (state dicts) read with a restricted loader, for published weights the training tools use
(TAEF2's .pth files, the EfficientNet-Lite0 judge's legacy .pth).

Before anything is unpickled, every pickle in the file is walked opcode by opcode (pickletools, which only
parses) and the globals it would import are listed; the file is refused unless each one is a tensor rebuild, a
storage type or an OrderedDict. Only then is it read, with torch.load(weights_only=True), and the result must be a
dict of tensors. Both of torch's layouts are handled:
- the zip format (torch >= 1.6): one archive/data.pkl, storages as separate archive members;
- the legacy format: pickles one after another (magic number, protocol version, system info, the state dict,
  the storage keys), then the raw storage bytes.
Training/evaluation only; the plugin's run time reads ONNX graphs and JSON, never a pickle.
"""
from __future__ import annotations

import io
import pickletools
import zipfile
from typing import Dict, Iterable, Tuple

import torch

# torch.serialization's magic number, the first pickle of a legacy (non-zip) torch file
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PICKLES = 5  # magic, protocol version, system info, the object, the storage keys
STORAGES = ("HalfStorage", "FloatStorage", "BFloat16Storage", "DoubleStorage", "LongStorage", "IntStorage",
            "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage")
ALLOWED_GLOBALS = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2")} | \
    {("torch", s) for s in STORAGES}

_STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING",
               "STRING")
_STACK_NEUTRAL = ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO")
_GETS = ("GET", "BINGET", "LONG_BINGET")
UNKNOWN = ("?", "?")


class UnsafeWeights(ValueError):
    pass


def pickle_globals(data) -> set:
    """(module, name) of every global one pickle would import (GLOBAL, INST and STACK_GLOBAL opcodes); data is
    bytes or a file positioned at the pickle (left just after its STOP). A STACK_GLOBAL whose two operands are not
    the strings pushed (or fetched from the memo) just before it is reported as ('?', '?'), so it is refused."""
    out, memo, pushed = set(), {}, []
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in ("GLOBAL", "INST"):
            mod, _, attr = str(arg).partition(" ")
            out.add((mod, attr))
            pushed = []
        elif name == "STACK_GLOBAL":
            out.add(tuple(pushed[-2:]) if len(pushed) >= 2 else UNKNOWN)
            pushed = []
        elif name in _STRING_OPS:
            pushed.append(str(arg))
        elif name in _GETS and isinstance(memo.get(arg), str):
            pushed.append(memo[arg])
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif name not in _STACK_NEUTRAL:
            pushed = []  # anything else changes the stack: what follows cannot be attributed to earlier strings
    return out


def _zip_pickles(raw: bytes, path: str) -> Iterable[bytes]:
    zf = zipfile.ZipFile(io.BytesIO(raw))
    pkls = [n for n in zf.namelist() if n.endswith(".pkl")]
    if len(pkls) != 1 or not pkls[0].endswith("data.pkl"):
        raise UnsafeWeights(f"{path}: expected one data.pkl in the archive, found {pkls}.")
    return [zf.read(pkls[0])]


def legacy_globals(raw: bytes, path: str) -> set:
    """The globals of the pickles at the head of a legacy torch file; refused unless the first is torch's magic
    number (what follows the last pickle is raw storage bytes, never parsed as a pickle)."""
    f = io.BytesIO(raw)
    out = set()
    for i in range(LEGACY_PICKLES):
        start = f.tell()
        try:
            found = pickle_globals(f)
        except Exception as exc:  # pickletools raises ValueError and others on malformed input
            raise UnsafeWeights(f"{path}: not a legacy torch file (pickle {i} does not parse: {exc}).") from exc
        if i == 0:
            f.seek(start)
            ops = list(pickletools.genops(f))
            if not any(op.name in ("LONG1", "LONG4", "LONG") and arg == LEGACY_MAGIC for op, arg, _ in ops):
                raise UnsafeWeights(f"{path}: not a torch file (neither a zip archive nor a legacy file with "
                                    "torch's magic number).")
        out |= found
    return out


def file_globals(raw: bytes, path: str, legacy: bool = False) -> Tuple[set, str]:
    """(every global the pickles of a torch file's bytes import, 'zip' or 'legacy'); legacy=False refuses the
    legacy layout. path only names the file in messages."""
    if zipfile.is_zipfile(io.BytesIO(raw)):
        found = set()
        for pkl in _zip_pickles(raw, path):
            found |= pickle_globals(pkl)
        return found, "zip"
    if not legacy:
        raise UnsafeWeights(f"{path}: not a zip-format torch file (legacy pickles are never read).")
    return legacy_globals(raw, path), "legacy"


def read_weights(path: str, legacy: bool = False) -> Dict[str, torch.Tensor]:
    """A torch state dict, refused unless its pickles only rebuild tensors. legacy: also accept torch's legacy
    (non-zip) layout, checked the same way."""
    with open(path, "rb") as f:
        raw = f.read()
    found, _ = file_globals(raw, path, legacy)
    bad = found - ALLOWED_GLOBALS
    if bad:
        raise UnsafeWeights(f"{path}: the pickle imports {sorted(bad)}, not only tensor-rebuild globals; refused.")
    sd = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)  # the bytes that were checked
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UnsafeWeights(f"{path}: not a state dict of tensors.")
    return sd
