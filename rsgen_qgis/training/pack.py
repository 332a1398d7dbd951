"""One compact file with everything training needs, for a machine that cannot read the prepared data folder.

    python -m rsgen_qgis.training.pack pack --data DATA --out runs/pack/train.npz     (here, on the CPU)
    python -m rsgen_qgis.training.pack unpack runs/pack/train.npz --cache runs/cache   (on the training machine)

Why: a lent GPU machine receives at most 64 MiB per call and cannot fetch anything, while the decoded training
arrays are ~600 MB. The pack holds the AID and maps *train* splits re-encoded as WebP (one byte buffer plus
offsets: no pickled objects anywhere), the maps layouts losslessly (zlib-compressed npz), and the caption
embeddings computed here with the sentence encoder (so the training machine needs neither the encoder package
nor the raw data). `unpack` writes exactly the cache files that data.load_aid / data.load_maps and
train.caption_embeddings read, so train.py runs unchanged (`train.py --pack FILE` unpacks first).
"""
from __future__ import annotations

import argparse
import io
import os
from typing import Dict, List, Tuple

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


def pack(aid: Dict, maps: Dict, captions: Dict[str, np.ndarray], out: str, quality: int = 75) -> Dict[str, int]:
    """Write the pack atomically; returns sizes in bytes per part."""
    aid_buf, aid_off = _encode(aid["images"], quality)
    maps_buf, maps_off = _encode(maps["aerial"], quality)
    caps = list(captions)
    arrays = dict(format=np.array(FORMAT), aid_webp=aid_buf, aid_offsets=aid_off,
                  aid_labels=np.asarray(aid["labels"], np.int64), aid_classes=np.array(list(aid["classes"])),
                  maps_webp=maps_buf, maps_offsets=maps_off, maps_layout=np.asarray(maps["layout"], np.uint8),
                  captions=np.array(caps), caption_emb=np.stack([captions[c] for c in caps]).astype(np.float32))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".partial.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    return {"aid_webp": aid_buf.nbytes, "maps_webp": maps_buf.nbytes, "total": os.path.getsize(out)}


def unpack(path: str, cache: str) -> Dict[str, int]:
    """Write aid_train.npz, maps_train.npz and caption_emb.npz into `cache` (the training cache layout)."""
    z = np.load(path, allow_pickle=False)
    if str(z["format"]) != FORMAT:
        raise ValueError(f"{path}: not a training pack of format {FORMAT} (found {z['format']!s}).")
    os.makedirs(cache, exist_ok=True)
    aid = _decode(z["aid_webp"], z["aid_offsets"])
    np.savez(os.path.join(cache, "aid_train.npz"), images=aid, labels=z["aid_labels"], classes=z["aid_classes"])
    aerial = _decode(z["maps_webp"], z["maps_offsets"])
    np.savez(os.path.join(cache, "maps_train.npz"), aerial=aerial, layout=z["maps_layout"])
    np.savez(os.path.join(cache, "caption_emb.npz"), captions=z["captions"], emb=z["caption_emb"])
    return {"aid": len(aid), "maps": len(aerial), "captions": len(z["captions"])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="prepared data folder -> one pack file")
    p.add_argument("--data", required=True, help="folder written by ../shared/tools/prepare-data")
    p.add_argument("--out", default="runs/pack/train.npz")
    p.add_argument("--cache", default="runs/cache", help="decoded-array cache shared with train.py")
    p.add_argument("--quality", type=int, default=75, help="WebP quality of the images")
    u = sub.add_parser("unpack", help="pack file -> training cache")
    u.add_argument("pack")
    u.add_argument("--cache", default="runs/cache")
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        from .data import load_aid, load_maps
        from .train import caption_embeddings

        sizes = pack(load_aid(a.data, "train", a.cache), load_maps(a.data, "train", a.cache),
                     caption_embeddings(a.cache), a.out, a.quality)
        print(f"wrote {a.out}: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))
    else:
        print("unpacked: " + ", ".join(f"{k} {v}" for k, v in unpack(a.pack, a.cache).items()))


if __name__ == "__main__":
    main()
