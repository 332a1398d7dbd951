"""One compact file with everything training needs, for a machine that cannot read the prepared data folder.

    python -m rsgen_qgis.training.pack pack --data DATA --out runs/pack/train.npz [--max-part-mib 18]
    python -m rsgen_qgis.training.pack unpack runs/pack/train.npz --cache runs/cache   (on the training machine)

Why: a lent GPU machine receives at most 64 MiB per call and cannot fetch anything, while the decoded training
arrays are ~600 MB. The pack holds the AID and maps *train* splits re-encoded as WebP (one byte buffer plus
offsets: no pickled objects anywhere), the maps layouts losslessly (zlib-compressed npz), and the caption
embeddings computed here with the sentence encoder (so the training machine needs neither the encoder package
nor the raw data). `unpack` writes exactly the cache files that data.load_aid / data.load_maps and
train.caption_embeddings read, so train.py runs unchanged (`train.py --pack FILE` unpacks first).

Parts: the 64 MiB a device call carries include the repository's tracked files (~43 MB with the bundled model),
so the whole pack (~68 MiB at q75) cannot travel at once. `--max-part-mib M` splits it into self-describing parts
`train.part1of3.npz`, ... (each under M MiB; images with their labels and layouts, the captions in every part),
sent one per call under distinct names (a machine keeps ignored files between calls while it stays warm);
`unpack` takes any part, finds its siblings beside it and refuses an incomplete set.
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import zlib
from typing import Dict, List, Sequence, Tuple

import numpy as np

FORMAT = "rsgen-train-pack/1"


def _encode(images: np.ndarray, quality: int) -> Tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    chunks: List[bytes] = []
    for im in images:
        b = io.BytesIO()
        Image.fromarray(im).save(b, "WEBP", quality=quality, method=4)
        chunks.append(b.getvalue())
    offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
    return np.frombuffer(b"".join(chunks), np.uint8), offsets


def _decode(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    out = [np.asarray(Image.open(io.BytesIO(buf[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"), np.uint8)
           for i in range(len(offsets) - 1)]
    return np.stack(out)


def _save(out: str, arrays: dict) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".partial.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    return os.path.getsize(out)


def _split(sizes: Sequence[int], budget: int) -> List[Tuple[int, int]]:
    """Consecutive ranges of items whose sizes add up to at most budget each (an item larger alone: its own)."""
    ranges, start, acc = [], 0, 0
    for i, n in enumerate(sizes):
        if acc and acc + n > budget:
            ranges.append((start, i))
            start, acc = i, 0
        acc += n
    ranges.append((start, len(sizes)))
    return ranges


def part_name(out: str, k: int, n: int) -> str:
    stem = out[:-4] if out.endswith(".npz") else out
    return f"{stem}.part{k}of{n}.npz"


def pack(aid: Dict, maps: Dict, captions: Dict[str, np.ndarray], out: str, quality: int = 75,
         max_part_bytes: int = 0) -> Dict[str, int]:
    """Write the pack atomically (one file, or parts under max_part_bytes each); returns sizes in bytes."""
    aid_buf, aid_off = _encode(aid["images"], quality)
    maps_buf, maps_off = _encode(maps["aerial"], quality)
    caps = list(captions)
    common = dict(format=np.array(FORMAT), aid_classes=np.array(list(aid["classes"])))
    text = dict(captions=np.array(caps), caption_emb=np.stack([captions[c] for c in caps]).astype(np.float32))
    layout = np.asarray(maps["layout"], np.uint8)
    labels = np.asarray(aid["labels"], np.int64)
    for old in [out] + glob.glob(part_name(out, "*", "*")):  # an earlier pack of either kind would shadow this one
        if os.path.exists(old):
            os.remove(old)
    if not max_part_bytes:
        total = _save(out, dict(common, **text, aid_webp=aid_buf, aid_offsets=aid_off, aid_labels=labels,
                                maps_webp=maps_buf, maps_offsets=maps_off, maps_layout=layout))
        return {"aid_webp": aid_buf.nbytes, "maps_webp": maps_buf.nbytes, "total": total, "parts": 1}
    # item sizes as stored: WebP bytes (+ the zlib size of a map's layout); 10 % headroom for the npz framing
    items = [("aid", i, int(aid_off[i + 1] - aid_off[i])) for i in range(len(aid_off) - 1)]
    items += [("maps", i, int(maps_off[i + 1] - maps_off[i]) + len(zlib.compress(layout[i].tobytes(), 6)))
              for i in range(len(maps_off) - 1)]
    # the caption embeddings travel in the first part: its budget is smaller by their compressed size
    text_bytes = len(zlib.compress(text["caption_emb"].tobytes(), 6)) + text["captions"].nbytes
    budget = int(max_part_bytes * 0.9)
    sizes = [n for _, _, n in items]
    first = _split(sizes, budget - text_bytes)[0][1]
    ranges = [(0, first)] + [(a + first, b + first) for a, b in _split(sizes[first:], budget)] \
        if first < len(sizes) else [(0, first)]

    def sub(buf: np.ndarray, off: np.ndarray, idx: List[int]) -> Tuple[np.ndarray, np.ndarray]:
        data = np.concatenate([buf[off[i]:off[i + 1]] for i in idx]) if idx else np.zeros(0, np.uint8)
        return data, np.cumsum([0] + [int(off[i + 1] - off[i]) for i in idx]).astype(np.int64)

    total, n = 0, len(ranges)
    for k, (a, b) in enumerate(ranges, 1):
        ai = [i for kind, i, _ in items[a:b] if kind == "aid"]
        mi = [i for kind, i, _ in items[a:b] if kind == "maps"]
        ab, ao = sub(aid_buf, aid_off, ai)
        mb, mo = sub(maps_buf, maps_off, mi)
        total += _save(part_name(out, k, n), dict(
            common, **(text if k == 1 else {}), part=np.array([k, n]), aid_webp=ab, aid_offsets=ao, aid_labels=labels[ai],
            maps_webp=mb, maps_offsets=mo, maps_layout=layout[mi] if mi else np.zeros((0,) + layout.shape[1:], np.uint8)))
    return {"aid_webp": aid_buf.nbytes, "maps_webp": maps_buf.nbytes, "total": total, "parts": n}


def pack_files(path: str) -> List[str]:
    """The file(s) of the pack `path` names: itself, or all parts of the set it belongs to (checked complete)."""
    import re

    m = re.match(r"(.*)\.part(\d+)of(\d+)\.npz$", path)
    if not m:
        if os.path.exists(path):
            return [path]
        found = sorted(glob.glob(part_name(path, "*", "*")))
        if not found:
            raise FileNotFoundError(f"{path}: no such pack, and no parts of it beside it.")
        m = re.match(r"(.*)\.part(\d+)of(\d+)\.npz$", found[0])
    n = int(m.group(3))
    files = [f"{m.group(1)}.part{k}of{n}.npz" for k in range(1, n + 1)]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise ValueError(f"The pack is incomplete: {', '.join(os.path.basename(f) for f in missing)} missing "
                         f"({n} parts in all).")
    return files


def unpack(path: str, cache: str) -> Dict[str, int]:
    """Write aid_train.npz, maps_train.npz and caption_emb.npz into `cache` (the training cache layout). `path`:
    a pack, one of its parts, or the name the parts were made from."""
    aid, labels, aerial, layouts = [], [], [], []
    for f in pack_files(path):
        z = np.load(f, allow_pickle=False)
        if "format" not in z or str(z["format"]) != FORMAT:
            found = z["format"] if "format" in z else "no format"
            raise ValueError(f"{f}: not a training pack of format {FORMAT} (found {found!s}).")
        if len(z["aid_offsets"]) > 1:
            aid.append(_decode(z["aid_webp"], z["aid_offsets"]))
        labels.append(z["aid_labels"])
        if len(z["maps_offsets"]) > 1:
            aerial.append(_decode(z["maps_webp"], z["maps_offsets"]))
        layouts.append(z["maps_layout"])
        classes = z["aid_classes"]
        if "captions" in z:
            caps, emb = z["captions"], z["caption_emb"]
    os.makedirs(cache, exist_ok=True)
    aid, aerial = np.concatenate(aid), np.concatenate(aerial)
    np.savez(os.path.join(cache, "aid_train.npz"), images=aid, labels=np.concatenate(labels), classes=classes)
    np.savez(os.path.join(cache, "maps_train.npz"), aerial=aerial, layout=np.concatenate(layouts))
    np.savez(os.path.join(cache, "caption_emb.npz"), captions=caps, emb=emb)
    return {"aid": len(aid), "maps": len(aerial), "captions": len(caps)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="prepared data folder -> one pack file")
    p.add_argument("--data", required=True, help="folder written by ../shared/tools/prepare-data")
    p.add_argument("--out", default="runs/pack/train.npz")
    p.add_argument("--cache", default="runs/cache", help="decoded-array cache shared with train.py")
    p.add_argument("--quality", type=int, default=75, help="WebP quality of the images")
    p.add_argument("--max-part-mib", type=float, default=0,
                   help="split into parts of at most this many MiB (0: one file); 18 lets a part travel to a "
                        "device call beside the repository")
    u = sub.add_parser("unpack", help="pack file -> training cache")
    u.add_argument("pack")
    u.add_argument("--cache", default="runs/cache")
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        from .data import load_aid, load_maps
        from .train import caption_embeddings

        sizes = pack(load_aid(a.data, "train", a.cache), load_maps(a.data, "train", a.cache),
                     caption_embeddings(a.cache), a.out, a.quality, int(a.max_part_mib * 2**20))
        print(f"wrote {a.out} ({sizes.pop('parts')} part(s)): " +
              ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))
    else:
        print("unpacked: " + ", ".join(f"{k} {v}" for k, v in unpack(a.pack, a.cache).items()))


if __name__ == "__main__":
    main()
