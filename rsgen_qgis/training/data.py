"""Real training data in memory, and batches with every condition the model accepts.

Reads what ../shared/tools/prepare-data writes (AID scenes, pix2pix "maps" aerial/map pairs), decodes it
once into uint8 arrays cached under the run folder, then builds each batch on the fly with torch ops:
random scale crops (which set the GSD metadata), flips/rotations, captions, layout from map colours,
inpainting masks and low-resolution guides, each condition present or dropped at random so that
classifier-free guidance works per condition.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.conditions.encoding import CondLayout, LAYOUT_CLASSES, encode_gsd
from .captions import AID_SYNONYMS, aid_captions, layout_caption

# Nominal GSD of the 150 px AID copy (AID scenes are 600 px at ~0.5-8 m; 4x smaller here). AID gives no
# per-image GSD; 4 m is our documented approximation. The maps tiles are ~2.34 m/px at 256 px.
AID_GSD_150 = 4.0
MAPS_GSD_256 = 2.34
NYC_LONLAT = (-73.95, 40.73)

# Flat colours of the pix2pix map renderings (prepare-data's header), in LAYOUT_CLASSES order.
MAP_COLOURS = np.array([(233, 228, 222), (250, 250, 249), (248, 179, 60), (246, 243, 233),
                        (200, 216, 168), (178, 201, 255)], np.float32)


def map_to_layout(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 map rendering -> (H, W) uint8 layout class ids by nearest flat colour."""
    d = ((rgb[..., None, :].astype(np.float32) - MAP_COLOURS) ** 2).sum(-1)
    return d.argmin(-1).astype(np.uint8)


def aid_split(names: List[str], split: str) -> List[str]:
    """Deterministic 80/20 split of one class's sorted file names: every 5th is held out ('test')."""
    names = sorted(names)
    return [n for i, n in enumerate(names) if (i % 5 == 4) == (split == "test")]


def _load_rgb(path: str, size: Optional[int] = None) -> np.ndarray:
    from PIL import Image

    im = Image.open(path).convert("RGB")
    if size and im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im, np.uint8)


def load_aid(root: str, split: str, cache: Optional[str] = None) -> Dict[str, np.ndarray]:
    cpath = cache and os.path.join(cache, f"aid_{split}.npz")
    if cpath and os.path.exists(cpath):
        z = np.load(cpath)
        return {"images": z["images"], "labels": z["labels"], "classes": list(z["classes"])}
    classes = sorted(os.listdir(os.path.join(root, "aid")))
    imgs, labels = [], []
    for k, c in enumerate(classes):
        d = os.path.join(root, "aid", c)
        for n in aid_split([f for f in os.listdir(d) if f.endswith(".jpg")], split):
            imgs.append(_load_rgb(os.path.join(d, n), 150))
            labels.append(k)
    out = {"images": np.stack(imgs), "labels": np.array(labels, np.int64), "classes": classes}
    if cpath:
        os.makedirs(cache, exist_ok=True)
        np.savez(cpath, images=out["images"], labels=out["labels"], classes=np.array(classes))
    return out


def load_maps(root: str, split: str, cache: Optional[str] = None) -> Dict[str, np.ndarray]:
    cpath = cache and os.path.join(cache, f"maps_{split}.npz")
    if cpath and os.path.exists(cpath):
        z = np.load(cpath)
        return {"aerial": z["aerial"], "layout": z["layout"]}
    d = os.path.join(root, "maps", split)
    ids = sorted({f.split("_")[0] for f in os.listdir(d) if f.endswith("_aerial.jpg")}, key=int)
    aerial = np.stack([_load_rgb(os.path.join(d, f"{i}_aerial.jpg")) for i in ids])
    layout = np.stack([map_to_layout(_load_rgb(os.path.join(d, f"{i}_map.jpg"))) for i in ids])
    out = {"aerial": aerial, "layout": layout}
    if cpath:
        os.makedirs(cache, exist_ok=True)
        np.savez(cpath, **out)
    return out


@dataclass
class Probabilities:
    aid: float = 0.65          # share of AID scenes in a batch (the rest: maps tiles)
    drop_text: float = 0.15
    maps_text: float = 0.5
    drop_gsd: float = 0.2
    drop_location: float = 0.3
    layout: float = 0.7        # maps tiles only
    inpaint: float = 0.2
    guide: float = 0.2


def random_masks(n: int, res: int, rng: np.random.Generator) -> np.ndarray:
    """Blob masks (1-3 ellipses or rectangles) covering roughly 10-60 % of a tile."""
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) / res
    out = np.zeros((n, res, res), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.1, 0.9, 2)
            ry, rx = rng.uniform(0.1, 0.35, 2)
            if rng.random() < 0.5:
                m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                m = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
            out[i][m] = 1.0
    return out


class BatchMaker:
    """Builds training batches {x0, spatial, cond} at a given resolution."""

    def __init__(self, aid: Dict, maps: Dict, caption_emb: Dict[str, np.ndarray], seed: int = 0,
                 probs: Probabilities = Probabilities()):
        self.aid, self.maps, self.emb, self.p = aid, maps, caption_emb, probs
        self.rng = np.random.default_rng(seed)
        self.pyrng = random.Random(seed)
        self.text_dim = len(next(iter(caption_emb.values())))
        self.lay = CondLayout(self.text_dim)
        self.class_names = aid["classes"]

    def _crops(self, images: np.ndarray, idx: np.ndarray, c: int, res: int, extra: Optional[np.ndarray] = None):
        size = images.shape[1]
        ys = self.rng.integers(0, size - c + 1, len(idx))
        xs = self.rng.integers(0, size - c + 1, len(idx))
        x = np.stack([images[i, y:y + c, x_:x_ + c] for i, y, x_ in zip(idx, ys, xs)])
        lay = None if extra is None else np.stack([extra[i, y:y + c, x_:x_ + c] for i, y, x_ in zip(idx, ys, xs)])
        k = self.rng.integers(0, 4)
        flip = self.rng.random() < 0.5
        x = np.rot90(x, k, axes=(1, 2))
        lay = None if lay is None else np.rot90(lay, k, axes=(1, 2))
        if flip:
            x = x[:, :, ::-1]
            lay = None if lay is None else lay[:, :, ::-1]
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 127.5 - 1
        if c != res:
            t = F.interpolate(t, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        if lay is not None:
            oh = F.one_hot(torch.from_numpy(np.ascontiguousarray(lay)).long(), len(LAYOUT_CLASSES))
            oh = oh.permute(0, 3, 1, 2).float()
            if c != res:
                oh = F.interpolate(oh, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
            lay = F.one_hot(oh.argmax(1), len(LAYOUT_CLASSES)).permute(0, 3, 1, 2).float()
        return t.clamp(-1, 1), lay

    def batch(self, n: int, res: int) -> Dict[str, torch.Tensor]:
        p, rng = self.p, self.rng
        n_aid = int(rng.binomial(n, p.aid))
        xs, lays, conds = [], [], []
        if n_aid:
            idx = rng.integers(0, len(self.aid["images"]), n_aid)
            c = int(rng.integers(max(res, 48), 151))
            x, _ = self._crops(self.aid["images"], idx, c, res)
            gsd = AID_GSD_150 * c / res
            for i in idx:
                cls = self.class_names[self.aid["labels"][i]]
                cap = None if rng.random() < p.drop_text else self.pyrng.choice(aid_captions(cls))
                conds.append((cap, None if rng.random() < p.drop_gsd else gsd, None))
            xs.append(x)
            lays.append(torch.zeros(n_aid, len(LAYOUT_CLASSES), res, res))
        if n - n_aid:
            m = n - n_aid
            idx = rng.integers(0, len(self.maps["aerial"]), m)
            c = int(rng.integers(res, 257))
            x, lay = self._crops(self.maps["aerial"], idx, c, res, self.maps["layout"])
            gsd = MAPS_GSD_256 * c / res
            keep = torch.from_numpy(rng.random(m) < p.layout).float()
            frac = lay.mean((2, 3)).numpy()
            for j in range(m):
                cap = layout_caption(frac[j], self.pyrng) if rng.random() < p.maps_text else None
                loc = None if rng.random() < p.drop_location else NYC_LONLAT
                conds.append((cap, None if rng.random() < p.drop_gsd else gsd, loc, bool(keep[j])))
            xs.append(x)
            lays.append(lay * keep[:, None, None, None])
        x0 = torch.cat(xs)
        layout = torch.cat(lays)
        inpaint = rng.random(n) < p.inpaint
        guide_on = rng.random(n) < p.guide
        mask = torch.from_numpy(random_masks(n, res, rng)) * torch.from_numpy(inpaint).float()[:, None, None]
        mask = mask[:, None]
        masked = x0 * (1 - mask) * torch.from_numpy(inpaint).float()[:, None, None, None]
        g = F.interpolate(F.avg_pool2d(x0, 4), size=(res, res), mode="bilinear", align_corners=False)
        g = g * torch.from_numpy(guide_on).float()[:, None, None, None]
        spatial = torch.cat([layout, mask, masked, g], 1)
        cond = cond_matrix(self.lay, self.emb, conds, inpaint, guide_on)
        return {"x0": x0, "spatial": spatial, "cond": torch.from_numpy(cond)}


def cond_matrix(lay: CondLayout, emb: Dict[str, np.ndarray], conds: list, inpaint: np.ndarray,
                guide_on: np.ndarray) -> np.ndarray:
    """The global condition vectors of a batch: conds[i] = (caption or None, gsd or None, (lon, lat) or None
    [, has_layout]); flags of the spatial conditions from inpaint / guide_on (pixel and latent batches alike)."""
    n = len(conds)
    cond = np.zeros((n, lay.dim), np.float32)
    seg = lay.segments
    for i, cnd in enumerate(conds):
        cap, gsd, loc = cnd[:3]
        has_layout = bool(cnd[3]) if len(cnd) > 3 else False
        if cap is not None:
            o, s = seg["text"]
            cond[i, o:o + s] = emb[cap]
            cond[i, seg["text_present"][0]] = 1
        if gsd is not None:
            cond[i, seg["gsd"][0]] = encode_gsd(gsd)
            cond[i, seg["gsd_present"][0]] = 1
        if loc is not None:
            r = np.radians(loc[0])
            o = seg["lon"][0]
            cond[i, o:o + 2] = (np.sin(r), np.cos(r))
            cond[i, seg["lon_present"][0]] = 1
            cond[i, seg["lat"][0]] = loc[1] / 90.0
            cond[i, seg["lat_present"][0]] = 1
        cond[i, seg["layout_present"][0]] = float(has_layout)
        cond[i, seg["inpaint_present"][0]] = float(inpaint[i])
        cond[i, seg["guide_present"][0]] = float(guide_on[i])
    return cond
