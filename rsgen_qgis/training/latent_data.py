"""Training data for latent models: the prepared images encoded once into the autoencoder's latents, and batches
made from them with every condition, lowered to the latent grid exactly as the run time lowers them
(core/engine/prepare.py): layout as class fractions per latent cell, the inpainting mask on latent cells, the
masked image as the known latents outside the mask, the guide as the encoded 4x-coarser image.

    python -m rsgen_qgis.training.latent_data encode --data DATA [--maps-data DATA512] --ae models/taef2 \\
        --out runs/latents/train.npz

The encoding runs through the run time's own ONNX autoencoder (core.runtime.autoencoder), so training and
generation see the same latents. AID scenes (150 px) are centre-cropped to 144 px (18 x 18 latents); maps
tiles to whole latent cells (512 px -> 64 x 64). Batches are random crops of the latents as encoded, not turned or
flipped: TAEF2's latents do not commute with turns (`dihedral-check`: a turned latent decodes 18.5 dB from the
encoded turned image, against a round trip of 25.5 dB, on 32 AID scenes; MODEL_CARD.md), so a turned latent is one
the autoencoder never makes, and it decodes as streaks and smears. `turns=True` turns them all the same, for an
autoencoder that commutes with turns.
The pack is float16 (half the bytes; the latents' standardised range is about +-4, where float16 keeps
3 significant digits).
"""
from __future__ import annotations

import argparse
import json
import os
import random
from typing import Dict, List, Optional

import numpy as np

from ..core.conditions.encoding import CondLayout, LAYOUT_CLASSES
from .captions import aid_captions, layout_caption
from .data import AID_GSD_150, MAPS_GSD_256, NYC_LONLAT, Probabilities, cond_matrix, load_aid, load_maps

AID_CROP = 144


def open_autoencoder(ae_dir: str, threads: int = 0, precision: str = "fp32"):
    """The autoencoder package at ae_dir, verified and opened as the run time opens it (precision "auto": its int8
    decoder on the CPU where it has one; "fp32": the exact graphs, for training)."""
    from ..core.runtime.autoencoder import open_package_autoencoder
    from ..core.runtime.models import read_package, verify_files

    pkg = read_package(ae_dir)
    verify_files(pkg)
    return open_package_autoencoder(pkg, ["CPUExecutionProvider"], threads, precision=precision)


def _guide(img: np.ndarray, factor: int = 4) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> the image averaged over factor x factor cells, bilinearly upsampled back (the
    run time's guide for a guide array `factor` times coarser: conditions.encoding.guide_upsample)."""
    from ..core.conditions.encoding import guide_upsample

    c, H, W = img.shape
    g = img.reshape(c, H // factor, factor, W // factor, factor).mean((2, 4))
    return guide_upsample(g, (H, W)).astype(np.float32)


def _fractions(layout: np.ndarray, f: int) -> np.ndarray:
    """(H, W) class ids -> (K, H/f, W/f) uint8 class fractions x 255: the run time's lowering (engine.prepare)."""
    from ..core.conditions.encoding import layout_onehot
    from ..core.engine.prepare import pool_mean

    return np.round(pool_mean(layout_onehot(layout, len(LAYOUT_CLASSES)), f) * 255).astype(np.uint8)


def encode_images(ae, images: np.ndarray, crop: Optional[int], log=print) -> Dict[str, np.ndarray]:
    """(N, H, W, 3) uint8 -> {'z': (N, C, h, w) f16 latents, 'g': guide latents} (centre crop to `crop`)."""
    zs, gs = [], []
    for i, im in enumerate(images):
        a = im.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        if crop:
            o = (a.shape[1] - crop) // 2
            a = a[:, o:o + crop, o:o + crop]
        zs.append(ae.encode(a).astype(np.float16))
        gs.append(ae.encode(_guide(a)).astype(np.float16))
        if i % 500 == 0:
            log(f"encoded {i}/{len(images)}")
    return {"z": np.stack(zs), "g": np.stack(gs)}


# The dihedral transforms of a square image (90-degree turns k, then a left-right flip), in the order `copies` takes
# them: as is, flipped, turned by 90, 180, 270, then the turned ones flipped.
DIHEDRAL = ((0, False), (0, True), (1, False), (2, False), (3, False), (1, True), (2, True), (3, True))


def dihedral_copies(images: np.ndarray, copies: int) -> np.ndarray:
    """(N, H, W[, ...]) square images -> (copies * N, H, W[, ...]): the N images under each of the first `copies`
    transforms of DIHEDRAL, copy after copy (copy 0 is the images as they are)."""
    if not 1 <= copies <= len(DIHEDRAL):
        raise ValueError(f"copies must be within 1..{len(DIHEDRAL)}, not {copies}")
    out = []
    for k, flip in DIHEDRAL[:copies]:
        t = np.rot90(images, k, axes=(1, 2))
        out.append(np.ascontiguousarray(t[:, :, ::-1] if flip else t))
    return np.concatenate(out)


def spread(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when k is 0 or >= n)."""
    return np.arange(n) if not k or k >= n else np.linspace(0, n - 1, k).round().astype(int)


def encode_dataset(data: str, ae_dir: str, out: str, maps_data: Optional[str] = None, split: str = "train",
                   threads: int = 0, limit: int = 0, maps_limit: int = 0, aid_limit: int = 0,
                   shard: tuple = (0, 1), copies: int = 1) -> str:
    """Write the latent pack `out` (.npz): AID latents + labels + classes, maps latents + layout fractions.

    copies > 1: each selected image (and its layout) also flipped and turned (DIHEDRAL's first `copies`) and each
    copy encoded: augmentation that stays on the autoencoder's manifold, where turning latents does not.

    Each image is encoded whole (one window): the encoder is convolutional with a bounded receptive field, so this
    is the latent the run time's overlapping windows approximate, at less than half their cost on 512 px tiles."""
    ae = open_autoencoder(ae_dir, threads)
    ae.tile = 1 << 12
    cache = os.path.join(os.path.dirname(os.path.abspath(out)), "cache")
    aid = load_aid(data, split, cache)
    maps_split = "val" if split == "test" else split  # the maps' held-out split is called val
    maps = load_maps(maps_data or data, maps_split, os.path.join(cache, "maps_px") if maps_data else cache)
    if limit:
        aid = {**aid, "images": aid["images"][:limit], "labels": aid["labels"][:limit]}
        maps = {k: v[:limit] for k, v in maps.items()}
    k, n = shard  # shard k of n: every n-th image from k of the selection (n processes encode side by side)
    keep = spread(len(aid["images"]), aid_limit)[k::n] if aid_limit >= 0 else np.zeros(0, np.int64)
    aid = {**aid, "images": aid["images"][keep], "labels": aid["labels"][keep]}
    keep = spread(len(maps["aerial"]), maps_limit)[k::n]
    maps = {key: v[keep] for key, v in maps.items()}
    if copies != 1:
        aid = {**aid, "images": dihedral_copies(aid["images"], copies), "labels": np.tile(aid["labels"], copies)}
        maps = {key: dihedral_copies(v, copies) for key, v in maps.items()}
    if len(aid["images"]):
        a = encode_images(ae, aid["images"], AID_CROP)
    else:  # a maps-only pack (aid_limit < 0): empty AID arrays of the right shapes
        c, h = ae.channels, AID_CROP // ae.factor
        a = {"z": np.zeros((0, c, h, h), np.float16), "g": np.zeros((0, c, h // 4, h // 4), np.float16)}
    side = maps["aerial"].shape[1] // ae.factor * ae.factor
    m = encode_images(ae, maps["aerial"][:, :side, :side], None)
    lay = np.stack([_fractions(x[:side, :side], ae.factor) for x in maps["layout"]])
    maps_gsd = MAPS_GSD_256 * 256 / maps["aerial"].shape[1]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".partial.npz"
    np.savez(tmp, aid_z=a["z"], aid_g=a["g"], aid_labels=aid["labels"], aid_classes=np.array(aid["classes"]),
             maps_z=m["z"], maps_g=m["g"], maps_layout=lay, maps_gsd=np.float32(maps_gsd),
             aid_gsd=np.float32(AID_GSD_150), factor=np.int32(ae.factor), autoencoder=np.array(ae.name),
             autoencoder_sha256=np.array(ae.sha256))
    os.replace(tmp, out)
    return out


def dihedral_check(ae, images: np.ndarray, n: int = 16) -> dict:
    """How far turning/flipping latents is from encoding the turned image: PSNR (dB, images in [-1, 1] as 8-bit)
    of decode(turn(encode(x))) against decode(encode(turn(x))), beside the round trip's own PSNR."""
    def psnr(x, y):
        d = np.mean((np.clip(x, -1, 1) - np.clip(y, -1, 1)) ** 2) * (127.5 ** 2)
        return float(10 * np.log10(255.0 ** 2 / max(d, 1e-12)))
    turned, trip = [], []
    for im in images[:n]:
        a = im.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        o = (a.shape[1] - AID_CROP) // 2
        a = np.ascontiguousarray(a[:, o:o + AID_CROP, o:o + AID_CROP])
        z = ae.encode(a)
        trip.append(psnr(ae.decode(z), a))
        for k, flip in ((1, False), (2, False), (0, True), (3, True)):
            t = np.rot90(a, k, axes=(1, 2))
            zt = np.rot90(z, k, axes=(1, 2))
            if flip:
                t, zt = t[:, :, ::-1], zt[:, :, ::-1]
            t, zt = np.ascontiguousarray(t), np.ascontiguousarray(zt)
            turned.append(psnr(ae.decode(zt), ae.decode(ae.encode(t))))
    return {"latent_turn_vs_encoded_turn_psnr_db": float(np.mean(turned)),
            "round_trip_psnr_db": float(np.mean(trip)), "images": min(n, len(images))}


PER_SAMPLE = ("aid_z", "aid_g", "aid_labels", "maps_z", "maps_g", "maps_layout")


def load_pack(path: str) -> dict:
    """One pack, or several (comma-separated: shards encoded side by side) joined into one; the shards must agree
    on everything but their samples (autoencoder, classes, GSDs)."""
    packs = []
    for p in path.split(","):
        z = np.load(p)
        packs.append({k: z[k] for k in z.files})
    out = dict(packs[0])
    for pk in packs[1:]:
        for k, v in pk.items():
            if k not in PER_SAMPLE and not np.array_equal(v, out[k]):
                raise ValueError(f"latent packs {path!r} disagree on {k!r}: encode them with the same settings.")
    for k in PER_SAMPLE:
        out[k] = np.concatenate([pk[k] for pk in packs])
    return out


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k, axes=(-2, -1))
    return a[..., ::-1] if flip else a


def check_groups(packs: List[dict]) -> None:
    """Packs trained together (groups: e.g. the maps at 1.17 m and at 2.34 m) must share the autoencoder and the
    AID classes; a mismatch is refused, not mixed."""
    for pk in packs[1:]:
        for k in ("autoencoder_sha256", "factor", "aid_classes"):
            if not np.array_equal(pk[k], packs[0][k]):
                raise ValueError(f"latent pack groups disagree on {k!r}: encode them with the same autoencoder and "
                                 "AID folder.")
        if pk["aid_z"].shape[1:2] != packs[0]["aid_z"].shape[1:2]:
            raise ValueError("latent pack groups have different latent channels.")


class LatentBatchMaker:
    """Batches {x0, spatial, cond} on the latent grid, conditions as the run time lowers them. `pack`: one pack
    (load_pack) or a list of groups, each with its own GSDs and tile sizes (e.g. maps at 1.17 m and at 2.34 m):
    a batch comes from one group, drawn with equal chance among those holding the source (and large enough
    for the crop); with one group the draws are exactly those of a single pack."""

    def __init__(self, pack, caption_emb: Dict[str, np.ndarray], seed: int = 0,
                 probs: Probabilities = Probabilities(), turns: bool = False):
        self.turns = bool(turns)  # flips and 90-degree turns of the latents themselves (see the module's text)
        self.groups = list(pack) if isinstance(pack, (list, tuple)) else [pack]
        check_groups(self.groups)
        self.pk, self.emb, self.p = self.groups[0], caption_emb, probs
        self.rng = np.random.default_rng(seed)
        self.pyrng = random.Random(seed)
        self.lay = CondLayout(len(next(iter(caption_emb.values()))))
        self.classes = [str(c) for c in self.pk["aid_classes"]]
        self.C = int(self.pk["aid_z"].shape[1])
        self.factor = int(self.pk["factor"])

    def _group(self, source: str, res: int) -> dict:
        key = "aid_z" if source == "aid" else "maps_z"
        have = [g for g in self.groups if len(g[key]) and g[key].shape[-1] >= res]
        if not have:
            raise ValueError(f"no latent pack group has {source} samples of at least {res} latent cells")
        return have[0] if len(have) == 1 else have[int(self.rng.integers(0, len(have)))]

    def _crop(self, arrays: List[np.ndarray], idx: np.ndarray, res: int):
        size = arrays[0].shape[-1]
        ys = self.rng.integers(0, size - res + 1, len(idx))
        xs = self.rng.integers(0, size - res + 1, len(idx))
        k, flip = (int(self.rng.integers(0, 4)), bool(self.rng.random() < 0.5)) if self.turns else (0, False)
        return [np.stack([_dihedral(a[i, :, y:y + res, x:x + res], k, flip) for i, y, x in zip(idx, ys, xs)])
                .astype(np.float32) for a in arrays]

    def batch(self, n: int, res: int, source: str):
        """source 'aid' (res <= 18 latent cells) or 'maps'."""
        import torch

        from .data import random_masks

        p, rng = self.p, self.rng
        self.pk = self._group(source, res)
        conds = []
        K = len(LAYOUT_CLASSES)
        if source == "aid":
            idx = rng.integers(0, len(self.pk["aid_z"]), n)
            z, g = self._crop([self.pk["aid_z"], self.pk["aid_g"]], idx, res)
            layout = np.zeros((n, K, res, res), np.float32)
            gsd = float(self.pk["aid_gsd"])
            for i in idx:
                cls = self.classes[int(self.pk["aid_labels"][i])]
                cap = None if rng.random() < p.drop_text else self.pyrng.choice(aid_captions(cls))
                conds.append((cap, None if rng.random() < p.drop_gsd else gsd, None))
        else:
            idx = rng.integers(0, len(self.pk["maps_z"]), n)
            z, g, fr = self._crop([self.pk["maps_z"], self.pk["maps_g"], self.pk["maps_layout"]], idx, res)
            fr = fr / 255.0
            keep = rng.random(n) < p.layout
            layout = fr * keep[:, None, None, None]
            gsd = float(self.pk["maps_gsd"])
            frac = fr.mean((2, 3))
            for j in range(n):
                cap = layout_caption(frac[j], self.pyrng) if rng.random() < p.maps_text else None
                loc = None if rng.random() < p.drop_location else NYC_LONLAT
                conds.append((cap, None if rng.random() < p.drop_gsd else gsd, loc, bool(keep[j])))
        inpaint = rng.random(n) < p.inpaint
        guide_on = rng.random(n) < p.guide
        mask = random_masks(n, res, rng) * inpaint[:, None, None]
        masked = z * (1 - mask[:, None]) * inpaint[:, None, None, None]
        g = g * guide_on[:, None, None, None]
        spatial = np.concatenate([layout, mask[:, None], masked, g], 1).astype(np.float32)
        cond = cond_matrix(self.lay, self.emb, conds, inpaint, guide_on)
        return {"x0": torch.from_numpy(z), "spatial": torch.from_numpy(spatial), "cond": torch.from_numpy(cond)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode", help="encode the prepared data into a latent pack")
    e.add_argument("--data", required=True)
    e.add_argument("--maps-data", help="prepared folder with larger maps tiles (prepare-data --maps-px 512)")
    e.add_argument("--ae", required=True, help="autoencoder package folder (models/taef2)")
    e.add_argument("--out", required=True)
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--limit", type=int, default=0, help="first N images of each source (toy packs)")
    e.add_argument("--maps-limit", type=int, default=0, help="N maps tiles spread evenly over the split (a shorter encoding run)")
    e.add_argument("--aid-limit", type=int, default=0, help="N AID scenes spread evenly over the split (-1: none, "
                   "a maps-only pack, e.g. the maps at another GSD as a second group)")
    e.add_argument("--shard", default="0/1", help="k/n: encode every n-th selected image from k (run n side by side, "
                   "then give train with the n packs comma-separated)")
    e.add_argument("--copies", type=int, default=1, help="encode each image also flipped and turned: this many of "
                   "the 8 dihedral copies (1: as is; 2: and flipped; 8: all); the pack holds copies x the images")
    e.add_argument("--held-out", action="store_true", help="the held-out scenes instead (AID test split, maps val "
                   "split): a pack for diagnostics, never for training")
    c = sub.add_parser("dihedral-check", help="turned latents vs encoded turned images")
    c.add_argument("--data", required=True)
    c.add_argument("--ae", required=True)
    c.add_argument("--n", type=int, default=32, help="AID train scenes, spread evenly over the split (every class)")
    c.add_argument("--out", help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    if a.cmd == "encode":
        print(encode_dataset(a.data, a.ae, a.out, a.maps_data, split="test" if a.held_out else "train",
                             threads=a.threads, limit=a.limit,
                             maps_limit=a.maps_limit, aid_limit=a.aid_limit,
                             shard=tuple(int(v) for v in a.shard.split("/")), copies=a.copies))
    else:
        aid = load_aid(a.data, "train", None)
        r = dihedral_check(open_autoencoder(a.ae, threads=1), aid["images"][spread(len(aid["images"]), a.n)], a.n)
        r["command"] = f"python -m rsgen_qgis.training.latent_data dihedral-check --ae {a.ae} --n {a.n}"
        print(json.dumps(r))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
