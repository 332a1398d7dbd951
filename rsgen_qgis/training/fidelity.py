"""Fidelity figures beside KID (training/judge.py), for any package, pixel or latent, through the run-time engine
(core.engine.generate.generate_array) at the package's native tile:

- class fidelity by a classifier no model of ours was steered by: a linear probe on the ImageNet judge's features
  fitted on real AID training scenes (feature_judge); top-1 of class-prompt tiles against its top-1 on the
  held-out real scenes (the ceiling). Optionally also by the AID judge of `make eval` (evaluate.SceneNet, 3000
  steps, cosine; cached and shared with make eval; an hour or more of CPU to train once), images at its 64 px;
- usefulness as training data, as a linear probe: a logistic regression on the ImageNet judge's features, trained
  on generated tiles only (their class prompts as labels) and, beside it, on as many real AID training scenes a
  class; both tested on the held-out real scenes. The ratio synthetic / real is the figure;
- layout fidelity: held-out maps layouts (the 128 px centre of each 256 px tile, 300 m) generated without a
  prompt at the package's tile over the same ground, segmented by the `make eval` segmenter (trained on real
  aerials, 600 steps; cached) at its 64 px; mIoU against the layout, divided by the segmenter's mIoU on the real
  aerials of the same places;
- usefulness as training data (b): the segmenter trained on a small real set with and without tiles generated
  from other layouts, three seeds each (segmenter_gain);
- super-resolution x4: held-out AID scenes at the package's tile, 4x area-averaged, given as the guide; PSNR
  against the scene beside bicubic's, and KID (the ImageNet judge) of both against the real reference.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.engine.generate import generate_array
from ..core.request import Conditions, GenerationRequest
from .data import AID_GSD_150, MAPS_GSD_256, NYC_LONLAT, load_aid, load_maps
from .evaluate import RES, cached_net, miou, psnr, resize, to_tensor, train_classifier, train_segnet, wilson

AID_JUDGE_STEPS = 3000   # make eval's judge: --clf-steps 3000 --clf-cosine
SEGNET_STEPS = 600       # make eval's segmenter: --seg-steps 600
N_LAYOUT = 6
LAYOUT_CROP = (64, 192)  # the centre of a 256 px maps tile, as make eval's layout fidelity
LAYOUT_FOOTPRINT_M = (LAYOUT_CROP[1] - LAYOUT_CROP[0]) * MAPS_GSD_256


def aid_judge(data: str, cache: Optional[str], steps: int = AID_JUDGE_STEPS):
    """make eval's scene classifier (the same cache file: trained once, by whichever runs first)."""
    tr = load_aid(data, "train", cache)
    return cached_net(cache, "classifier_cosine", steps, f"{len(tr['labels'])}x{len(tr['classes'])}",
                      lambda: train_classifier(tr, 0, steps=steps, cosine=True))


@torch.no_grad()
def judge_top1(clf, u8: np.ndarray, labels: np.ndarray) -> Dict:
    """Top-1 of the AID judge on (N, H, W, 3) uint8 images resized to its 64 px, with a 95 % Wilson interval."""
    x = resize(to_tensor(u8), RES)
    return top1(torch.cat([clf(x[i:i + 256]) for i in range(0, len(x), 256)]).argmax(1).numpy(), labels)


def fit_probe(train_f: np.ndarray, train_y: np.ndarray, n_classes: int, steps: int = 300,
              weight_decay: float = 1e-2, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A multinomial logistic regression fitted on (train_f, train_y): features standardised by the training set's
    mean and spread, full-batch Adam for `steps` (deterministic), L2 penalty. Returns features -> class ids."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    x = torch.from_numpy((train_f - mu) / sd).float()
    y = torch.from_numpy(np.asarray(train_y, np.int64))
    w = (torch.randn(x.shape[1], n_classes, generator=g) * 1e-3).requires_grad_()
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * (w ** 2).sum()
        opt.zero_grad(); loss.backward(); opt.step()
    w, b = w.detach(), b.detach()

    def predict(f: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (torch.from_numpy((f - mu) / sd).float() @ w + b).argmax(1).numpy()
    return predict


def linear_probe(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray,
                 n_classes: int, steps: int = 300, weight_decay: float = 1e-2, seed: int = 0) -> float:
    """Accuracy on (test_f, test_y) of fit_probe(train_f, train_y)."""
    pred = fit_probe(train_f, train_y, n_classes, steps, weight_decay, seed)(test_f)
    return float((pred == np.asarray(test_y)).mean())


def real_train_features(features: Callable[[np.ndarray], np.ndarray], data: str, cache: Optional[str],
                        per_class: int, tag: str) -> Dict[str, np.ndarray]:
    """The judge's features of `per_class` real AID training scenes a class (evenly spread), cached under `tag`
    (the feature network's weights): {"f", "y"}."""
    path = cache and os.path.join(cache, f"features_{tag}_aid_train_{per_class}.npz")
    if path and os.path.exists(path):
        z = np.load(path)
        return {"f": z["f"], "y": z["y"]}
    tr = load_aid(data, "train", cache)
    idx = spread_per_class(tr["labels"], per_class, range(len(tr["classes"])))
    out = {"f": features(tr["images"][idx]), "y": tr["labels"][idx]}
    if path:
        os.makedirs(cache, exist_ok=True)
        np.savez(path + ".partial.npz", **out)
        os.replace(path + ".partial.npz", path)
    return out


def feature_judge(features: Callable[[np.ndarray], np.ndarray], data: str, cache: Optional[str], n_classes: int,
                  per_class: int = 60, tag: str = "effnet") -> Callable[[np.ndarray], np.ndarray]:
    """A scene classifier no model of ours was steered by: the linear probe on the ImageNet judge's features,
    fitted on `per_class` real AID training scenes a class. Returns features -> class ids."""
    r = real_train_features(features, data, cache, per_class, tag)
    return fit_probe(r["f"], r["y"], n_classes)


def top1(pred: np.ndarray, labels: np.ndarray) -> Dict:
    k, n = int((np.asarray(pred) == np.asarray(labels)).sum()), len(labels)
    return {"top1": k / n, "wilson95": wilson(k, n), "n": n}


def spread_per_class(labels: np.ndarray, per_class: int, classes: Sequence[int]) -> np.ndarray:
    """Indices of `per_class` items of each class, evenly spread over that class's items (deterministic)."""
    out = []
    for k in classes:
        idx = np.flatnonzero(labels == k)
        if len(idx) == 0:
            continue
        n = min(per_class, len(idx))
        out.append(idx[np.linspace(0, len(idx) - 1, n).round().astype(int)])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def usefulness_probe(features: Callable[[np.ndarray], np.ndarray], data: str, cache: Optional[str],
                     gen_f: np.ndarray, gen_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray,
                     n_classes: int, tag: str = "effnet") -> Dict:
    """The linear probe trained on generated tiles only and, beside it, on as many real AID training scenes of
    the same classes; both tested on the held-out real scenes."""
    classes = sorted(set(int(k) for k in gen_y))
    per = int(np.bincount(gen_y).max())
    r = real_train_features(features, data, cache, per, tag)
    on = np.isin(r["y"], classes)
    keep = np.isin(test_y, classes)
    syn = linear_probe(gen_f, gen_y, test_f[keep], test_y[keep], n_classes)
    real = linear_probe(r["f"][on], r["y"][on], test_f[keep], test_y[keep], n_classes)
    return {"trained_on_generated": syn, "trained_on_real": real, "ratio": syn / real if real > 0 else None,
            "train_per_class": per, "classes": len(classes), "test_scenes": int(keep.sum()),
            "chance": 1.0 / len(classes)}


def _utm_for(lon: float, lat: float):
    from pyproj import Transformer

    zone = int((lon + 180) // 6) + 1
    crs = f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    return crs, x, y


def _tile_request(model_dir: str, tile_px: int, footprint_m: float, crs: str, x: float, y: float, settings: Dict,
                  seed: int, prompt: str = "", conditions: Optional[Conditions] = None,
                  precision: str = "auto") -> GenerationRequest:
    gsd = footprint_m / tile_px
    x0, y0 = round(x / gsd) * gsd, round(y / gsd) * gsd
    return GenerationRequest(extent=(x0, y0, x0 + tile_px * gsd, y0 + tile_px * gsd), crs=crs, gsd=gsd, output="",
                             prompt=prompt, seed=seed, steps=settings["steps"], guidance=settings["guidance"],
                             sampler=settings["sampler"], model=model_dir, precision=precision,
                             class_guidance=0.0, autoguidance=settings.get("autoguidance"),
                             conditions=conditions or Conditions())


def nearest(a: np.ndarray, size: int) -> np.ndarray:
    """(..., h, w) -> (..., size, size) by nearest neighbour (pixel centres)."""
    h, w = a.shape[-2:]
    r = np.minimum(((np.arange(size) + 0.5) * h / size).astype(int), h - 1)
    c = np.minimum(((np.arange(size) + 0.5) * w / size).astype(int), w - 1)
    return a[..., r[:, None], c[None, :]]


def layout_fidelity(model_dir: str, tile_px: int, data: str, cache: Optional[str], n: int, settings: Dict,
                    seed_offset: int = 0, threads: int = 0, precision: str = "auto",
                    seg_steps: int = SEGNET_STEPS, log: Callable[[str], None] = print) -> Dict:
    tr, va = load_maps(data, "train", cache), load_maps(data, "val", cache)
    seg = cached_net(cache, "segnet", seg_steps, f"{len(tr['aerial'])}x{N_LAYOUT}",
                     lambda: train_segnet(tr, 0, N_LAYOUT, steps=seg_steps))
    n = min(n, len(va["aerial"]))
    a, b = LAYOUT_CROP
    ids, lay = _layout_crops(va, range(n))
    lay = lay.numpy()
    fake = layout_tiles(model_dir, tile_px, ids, settings, seed_offset, threads, precision)
    log(f"  {model_dir}: {n} layout tiles")
    with torch.no_grad():
        p_real = seg(resize(to_tensor(va["aerial"][:n, a:b, a:b]), RES)).argmax(1).numpy()
        p_fake = seg(resize(to_tensor(fake), RES)).argmax(1).numpy()
    m_real, m_fake = miou(p_real, lay, N_LAYOUT), miou(p_fake, lay, N_LAYOUT)
    return {"tiles": n, "footprint_m": LAYOUT_FOOTPRINT_M, "miou_real_heldout": m_real,
            "miou_generated": m_fake, "ratio": m_fake / m_real if m_real > 0 else None, "segnet_train_steps": seg.trained_steps,
            "images": fake}


def _layout_crops(maps: Dict, idx: Sequence[int]):
    """The 128 px centre crops of maps tiles `idx`: class ids (n, 128, 128) and their 64 px labels (area
    majority, as make eval's segmenter is trained)."""
    a, b = LAYOUT_CROP
    ids = maps["layout"][list(idx), a:b, a:b].astype(np.int64)
    lab = F.interpolate(F.one_hot(torch.from_numpy(ids), N_LAYOUT).permute(0, 3, 1, 2).float(), size=(RES, RES),
                        mode="area").argmax(1)
    return ids, lab


def layout_tiles(model_dir: str, tile_px: int, layouts: np.ndarray, settings: Dict, seed_offset: int = 0,
                 threads: int = 0, precision: str = "auto") -> np.ndarray:
    """(n, 128, 128) class ids of maps centre crops -> (n, T, T, 3) uint8 tiles generated without a prompt over
    the same ground in New York (as make eval's layout fidelity)."""
    crs, x, y = _utm_for(*NYC_LONLAT)
    out = []
    for i, ids in enumerate(layouts):
        req = _tile_request(model_dir, tile_px, LAYOUT_FOOTPRINT_M, crs, x, y, settings, i + seed_offset,
                            conditions=Conditions(layout=nearest(ids.astype(np.uint8), tile_px)), precision=precision)
        out.append(generate_array(req, providers=["CPUExecutionProvider"], threads=threads).rgb.transpose(1, 2, 0))
    return np.stack(out)


def segmenter_gain(model_dir: str, tile_px: int, data: str, cache: Optional[str], settings: Dict,
                   n_real: int = 150, n_generated: int = 150, seeds: Sequence[int] = (0, 1, 2),
                   steps: int = SEGNET_STEPS, n_test: int = 200, seed_offset: int = 0, threads: int = 0,
                   precision: str = "auto", log: Callable[[str], None] = print) -> Dict:
    """Usefulness as training data (b): make eval's segmenter trained on a small real set (the first `n_real`
    maps training pairs) with and without tiles generated from `n_generated` other training layouts (half of
    every batch), each with every seed; mIoU on the held-out real aerials (centre crops of the first `n_test`
    validation tiles). The gain counts where it is larger than the spread over the seeds."""
    tr, va = load_maps(data, "train", cache), load_maps(data, "val", cache)
    n_real = min(n_real, len(tr["aerial"]) // 2)
    n_generated = min(n_generated, len(tr["aerial"]) - n_real)
    small = {"aerial": tr["aerial"][:n_real], "layout": tr["layout"][:n_real]}
    ids, lab = _layout_crops(tr, range(n_real, n_real + n_generated))
    fake = layout_tiles(model_dir, tile_px, ids, settings, seed_offset, threads, precision)
    log(f"  {model_dir}: {len(fake)} generated training tiles for the segmenter")
    extra = (resize(to_tensor(fake), RES), lab)
    n_test = min(n_test, len(va["aerial"]))
    _, test_lab = _layout_crops(va, range(n_test))
    a, b = LAYOUT_CROP
    test_x = resize(to_tensor(va["aerial"][:n_test, a:b, a:b]), RES)

    def score(net) -> float:
        with torch.no_grad():
            pred = torch.cat([net(test_x[i:i + 100]) for i in range(0, n_test, 100)]).argmax(1).numpy()
        return miou(pred, test_lab.numpy(), N_LAYOUT)
    without = [_baseline_score(cache, small, test_x, test_lab, s, steps, lambda s=s: score(
        train_segnet(small, 0, N_LAYOUT, seed=s, steps=steps)), log) for s in seeds]
    with_gen = [score(train_segnet(small, 0, N_LAYOUT, seed=s, steps=steps, extra=extra)) for s in seeds]
    gain = float(np.mean(with_gen) - np.mean(without))
    spread = float(max(np.ptp(without), np.ptp(with_gen)))
    return {"real_pairs": n_real, "generated_tiles": len(fake), "share_generated": 0.5, "steps": steps,
            "seeds": list(seeds), "test_tiles": n_test, "miou_without": without, "miou_with": with_gen,
            "gain": gain, "spread": spread, "gain_exceeds_spread": gain > spread}


def _baseline_score(cache: Optional[str], small: Dict, test_x: torch.Tensor, test_lab: torch.Tensor, seed: int,
                    steps: int, compute: Callable[[], float], log: Callable[[str], None]) -> float:
    """The real-only segmenter's mIoU does not depend on the model judged: a pure function of the small real set,
    the test set, the seed, the steps and the torch build and thread count (CPU kernels sum in an order that
    depends on both). Kept in the cache under a key hashing all of them, so a second model's run (or a rerun)
    trains only the three segmenters with its own tiles."""
    if not cache or not steps:
        return compute()
    h = hashlib.sha256()
    for a in (small["aerial"], small["layout"], test_x.numpy(), test_lab.numpy()):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(f"{seed}|{steps}|{torch.__version__}|{torch.get_num_threads()}".encode())
    path = os.path.join(cache, f"segnet_real_only_{h.hexdigest()[:20]}.json")
    if os.path.exists(path):
        with open(path) as f:
            value = float(json.load(f)["miou"])
        log(f"  real-only segmenter, seed {seed}: mIoU {value:.4f} from {path}")
        return value
    value = compute()
    os.makedirs(cache, exist_ok=True)
    with open(path + ".partial", "w") as f:
        json.dump({"miou": value, "seed": seed, "steps": steps, "torch": torch.__version__,
                   "threads": torch.get_num_threads()}, f)
    os.replace(path + ".partial", path)
    return value


def super_resolution(model_dir: str, tile_px: int, real_u8: np.ndarray, settings: Dict, features: Callable,
                     ref_f: np.ndarray, kid_entry: Callable, place: tuple, seed_offset: int = 0, threads: int = 0,
                     precision: str = "auto", log: Callable[[str], None] = print, strength: float = 1.0) -> Dict:
    """real_u8: (N, h, w, 3) held-out scenes; each is resized to the package's tile (the high-resolution truth),
    4x area-averaged (the guide), and generated from the guide alone over the scene's footprint at `place`
    = (crs, x, y, footprint in m). strength < 1: the sampling starts from the guide upsampled to the tile, noised to
    that strength (SDEdit), as the run-time super-resolution does (core.request.Conditions.start_strength)."""
    crs, x, y, footprint = place
    hr = ((resize(to_tensor(real_u8), tile_px) + 1) * 127.5).round().clamp(0, 255).byte()
    lr = F.avg_pool2d(hr.float(), 4)
    bic = F.interpolate(lr, size=(tile_px, tile_px), mode="bicubic", align_corners=False).round().clamp(0, 255)
    bic = bic.byte().permute(0, 2, 3, 1).numpy()
    guide = lr.round().clamp(0, 255).byte().numpy()
    hr = hr.permute(0, 2, 3, 1).numpy()
    out = []
    for i in range(len(hr)):
        req = _tile_request(model_dir, tile_px, footprint, crs, x, y, settings, i + seed_offset,
                            conditions=Conditions(guide=guide[i], strength=strength), precision=precision)
        out.append(generate_array(req, providers=["CPUExecutionProvider"], threads=threads).rgb.transpose(1, 2, 0))
    log(f"  {model_dir}: {len(hr)} super-resolution tiles")
    sr = np.stack(out)
    return {"images": len(hr), "tile_px": tile_px, "strength": strength,
            "psnr_generated": float(np.mean([psnr(s, h) for s, h in zip(sr, hr)])),
            "psnr_bicubic": float(np.mean([psnr(b, h) for b, h in zip(bic, hr)])),
            "kid_generated_vs_B": kid_entry(features(sr), ref_f),
            "kid_bicubic_vs_B": kid_entry(features(bic), ref_f),
            "grid": [bic[:8], sr[:8], hr[:8]]}


__all__: List[str] = ["aid_judge", "judge_top1", "fit_probe", "linear_probe", "feature_judge", "top1", "usefulness_probe", "layout_fidelity",
                      "layout_tiles", "segmenter_gain",
                      "super_resolution", "spread_per_class", "nearest"]
