"""Train the evaluation segmentation net (training.evaluate.SegNet: aerial RGB -> layout classes, on the pix2pix
"maps" tiles) for a few minutes and export it as ONNX for the dataset filter (rsgen:dataset SEGNET, core.conditions.segfilter).

    .venv/bin/python tools/export_segnet.py --data /work/data --minutes 5 --out out/segnet.onnx

Contract written: input "image" (B, 3, H, W) float32 RGB in [-1, 1] (H, W multiples of 4), output "scores"
(B, 6, H, W) over core.conditions.LAYOUT_CLASSES. Trained at evaluate.RES px per 128 px crop, i.e. about
4.7 m per pixel; it prints the pixel accuracy and per-class IoU on the maps validation tiles. Not shipped in the
model package: it is a quick CPU net, use it to try the filter.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "segnet.onnx"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import numpy as np
    import torch
    import torch.nn.functional as F

    from rsgen_qgis.core.conditions.encoding import LAYOUT_CLASSES
    from rsgen_qgis.training.data import load_maps
    from rsgen_qgis.training.evaluate import RES, resize, to_tensor, train_segnet

    torch.set_num_threads(a.threads)
    n = len(LAYOUT_CLASSES)
    tr = load_maps(a.data, "train")
    net = train_segnet(tr, a.minutes, n)
    va = load_maps(a.data, "val")
    k = min(200, len(va["aerial"]))
    x = resize(to_tensor(va["aerial"][:k, 64:192, 64:192]), RES)
    gt = F.interpolate(F.one_hot(torch.from_numpy(va["layout"][:k, 64:192, 64:192].astype(np.int64)), n)
                       .permute(0, 3, 1, 2).float(), size=(RES, RES), mode="area").argmax(1).numpy()
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    iou = {}
    for c, name in enumerate(LAYOUT_CLASSES):
        inter, union = ((pred == c) & (gt == c)).sum(), ((pred == c) | (gt == c)).sum()
        if union:
            iou[name] = round(float(inter / union), 3)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    torch.onnx.export(net, torch.zeros(1, 3, RES, RES), a.out, input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": {0: "B", 2: "H", 3: "W"}, "scores": {0: "B", 2: "H", 3: "W"}},
                      opset_version=17, dynamo=False)
    print(json.dumps({"out": a.out, "val_tiles": k, "pixel_accuracy": round(float((pred == gt).mean()), 3),
                      "iou": iou}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
