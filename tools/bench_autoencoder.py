"""`make bench-ae DATA=dir [DATA512=dir]`: how faithful the shipped autoencoder (models/taef2) is, on held-out
real scenes, beside the obvious 8x baseline, and its ONNX graphs against the published torch weights.

- PSNR / SSIM of the ONNX round trip (through core.runtime.autoencoder: standardised latents, windowed) on the
  AID held-out split (every 5th scene of each class, 144 px centre crops) and on maps val tiles (512 px when
  DATA512 is given), beside 8x area-down + bicubic-up of the same images (the information an 8x grid holds
  without a learned decoder);
- the ONNX decoder and encoder against the torch network with the published .pth weights (--weights: the taesd
  git dir or a folder with taef2_*.pth), max |diff| on those scenes' latents;
- seconds per 256 px decode and encode (2 threads);
- where the package has an int8 decoder (training/quantize.py --autoencoder, the CPU default): the same round
  trips decoded by it, its PSNR from the fp32 decode, and its seconds per 256 px and per 464 px (a large-area
  block) decode beside the fp32 decoder's.
Writes runs/bench_ae.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    d = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(d, 1e-12)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luma, 8x8 windows (uint8 (3, H, W) inputs)."""
    w = np.array([0.299, 0.587, 0.114])[:, None, None]
    x, y = (np.sum(v.astype(np.float64) * w, 0) for v in (a, b))
    H, W = x.shape
    x = x[:H // 8 * 8, :W // 8 * 8].reshape(H // 8, 8, W // 8, 8)
    y = y[:H // 8 * 8, :W // 8 * 8].reshape(H // 8, 8, W // 8, 8)
    mx, my = x.mean((1, 3)), y.mean((1, 3))
    vx, vy = x.var((1, 3)), y.var((1, 3))
    cxy = ((x - mx[:, None, :, None]) * (y - my[:, None, :, None])).mean((1, 3))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float(np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))))


def bicubic8(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(img.transpose(1, 2, 0))
    w, h = im.size
    small = im.resize((w // 8, h // 8), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BICUBIC)).transpose(2, 0, 1)


def to_u8(a: np.ndarray) -> np.ndarray:
    return np.round((np.clip(a, -1, 1) + 1) * 127.5).astype(np.uint8)


def evaluate(ae, images, label: str, torch_nets=None) -> dict:
    rt, bc, rs, bs, diffs = [], [], [], [], []
    for img in images:
        x = img.astype(np.float32) / 127.5 - 1.0
        z = ae.encode(x)
        back = to_u8(ae.decode(z))
        b = bicubic8(img)
        rt.append(psnr(back, img)); bc.append(psnr(b, img))
        rs.append(ssim(back, img)); bs.append(ssim(b, img))
        if torch_nets is not None:
            import torch

            enc, dec = torch_nets
            raw = z * ae.scale + ae.shift
            with torch.no_grad():
                zt = enc(torch.from_numpy((x[None] + 1) / 2)).numpy()[0]
                it = dec(torch.from_numpy(raw[None].astype(np.float32))).numpy()[0]
            s = ae.g.decoder.session
            io = s.run(None, {"latent": raw[None].astype(np.float32)})[0][0]
            se = ae.g.encoder.session
            zo = se.run(None, {"image": ((x[None] + 1) / 2).astype(np.float32)})[0][0]
            diffs.append((float(np.abs(io - it).max()), float(np.abs(zo - zt).max())))
    out = {"images": len(images), "size_px": list(images[0].shape[1:]),
           "round_trip_psnr_db": float(np.mean(rt)), "bicubic8_psnr_db": float(np.mean(bc)),
           "round_trip_ssim": float(np.mean(rs)), "bicubic8_ssim": float(np.mean(bs))}
    if diffs:
        out["onnx_vs_torch_decoder_max_abs"] = max(d[0] for d in diffs)
        out["onnx_vs_torch_encoder_max_abs"] = max(d[1] for d in diffs)
    print(f"{label}: {out['images']} images {out['size_px']}: round trip {out['round_trip_psnr_db']:.2f} dB / "
          f"SSIM {out['round_trip_ssim']:.3f}; 8x area + bicubic {out['bicubic8_psnr_db']:.2f} dB / "
          f"SSIM {out['bicubic8_ssim']:.3f}"
          + (f"; ONNX vs torch: decoder {out['onnx_vs_torch_decoder_max_abs']:.2e}, encoder "
             f"{out['onnx_vs_torch_encoder_max_abs']:.2e}" if diffs else ""), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="prepare-data folder (AID held-out split, maps val)")
    ap.add_argument("--data512", help="prepare-data folder written with --maps-px 512")
    ap.add_argument("--ae", default=os.path.join(ROOT, "models", "taef2"))
    ap.add_argument("--weights", help="taesd git dir or folder with taef2_*.pth (ONNX vs torch)")
    ap.add_argument("--n", type=int, default=96, help="AID held-out scenes (spread over the classes)")
    ap.add_argument("--n-maps", type=int, default=16)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_ae.json"))
    a = ap.parse_args(argv)
    from rsgen_qgis.training.data import load_aid
    from rsgen_qgis.training.latent_data import AID_CROP, open_autoencoder

    ae = open_autoencoder(a.ae, threads=2)
    nets = None
    if a.weights:
        from rsgen_qgis.training import taef2

        nets = taef2.load(a.weights)
    aid = load_aid(a.data, "test", None)
    idx = np.linspace(0, len(aid["images"]) - 1, min(a.n, len(aid["images"]))).astype(int)
    o = (150 - AID_CROP) // 2
    imgs = [aid["images"][i][o:o + AID_CROP, o:o + AID_CROP].transpose(2, 0, 1) for i in idx]
    res = {"autoencoder": ae.describe(), "window": [ae.tile, ae.overlap],
           "aid_heldout_144px": evaluate(ae, imgs, "AID held-out, 144 px", nets)}
    from PIL import Image

    mroot = os.path.join(a.data512 or a.data, "maps", "val")
    names = sorted(f for f in os.listdir(mroot) if f.endswith("_aerial.jpg"))[:a.n_maps]
    maps = [np.asarray(Image.open(os.path.join(mroot, f)).convert("RGB")).transpose(2, 0, 1) for f in names]
    side = maps[0].shape[1] // 8 * 8
    maps = [m[:, :side, :side] for m in maps]
    res[f"maps_val_{side}px"] = evaluate(ae, maps, f"maps val, {side} px", nets)
    z = np.zeros((ae.channels, 32, 32), np.float32)
    x = np.zeros((3, 256, 256), np.float32)
    ae.decode(z); ae.encode(x)
    t = time.perf_counter(); ae.decode(z); dec = time.perf_counter() - t
    t = time.perf_counter(); ae.encode(x); enc = time.perf_counter() - t
    res["seconds_256px"] = {"decode": dec, "encode": enc, "threads": 2}
    print(f"256 px: decode {dec:.3f} s, encode {enc:.3f} s (2 threads)")
    fast = open_autoencoder(a.ae, threads=2, precision="auto")
    if fast.variant == "int8":
        q = {"aid_heldout_144px": evaluate(fast, imgs, "AID held-out, 144 px, int8 decoder"),
             f"maps_val_{side}px": evaluate(fast, maps, f"maps val, {side} px, int8 decoder")}
        gap = []
        for img in imgs + maps:
            zz = ae.encode(img.astype(np.float32) / 127.5 - 1.0)
            gap.append(psnr(to_u8(fast.decode(zz, whole=True)), to_u8(ae.decode(zz, whole=True))))
        q["int8_vs_fp32_decode_psnr_db"] = float(np.mean(gap))
        secs = {}
        for cells in (32, 58):
            zc = np.zeros((ae.channels, cells, cells), np.float32)
            for name, dec_ae in (("fp32", ae), ("int8", fast)):
                dec_ae.decode(zc, whole=True)
                t = time.perf_counter()
                for _ in range(3):
                    dec_ae.decode(zc, whole=True)
                secs[f"{name}_{cells * 8}px"] = (time.perf_counter() - t) / 3
        q["decode_seconds_whole"] = secs
        res["int8_decoder"] = q
        print(f"int8 decoder: {q['int8_vs_fp32_decode_psnr_db']:.2f} dB from the fp32 decode; seconds "
              + ", ".join(f"{k} {v:.3f}" for k, v in secs.items()))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
