"""Images of a model to look at at full size (the model card's "What it draws"); not a test, it needs prepared data.

    .venv/bin/python tools/model_grids.py classes --data DATA --model models/rsgen-base-1 --out grid.jpg \
        [--classes "DenseResidential,Farmland,..."] [--per-class 4] [--gsd 2.34] [--threads 1]
    .venv/bin/python tools/model_grids.py swellendam --data DATA --model models/rsgen-base-1 --out area.jpg \
        [--gsd 2] [--seed 7] [--prompt ""]       (ONNX Runtime's own threads: confine with taskset)
    .venv/bin/python tools/model_grids.py conditions --data DATA --model models/rsgen-base-1 --out cond.jpg \
        [--tiles 4] [--threads 1]

classes: for each class prompt (AID's caption of the class, as the evaluation uses), per-class tiles through the
run-time engine at the model's native tile over an AID scene's 600 m footprint (or at --gsd), seeds as the
evaluation's (1000 * class index + i), then one real held-out AID scene of the class resampled to the same size,
in the last column after a gap; the class name in a margin on the left. JPEG quality 90.
conditions: each spatial condition on held-out New York maps tiles (the val split, 256 px over their 600 m, 2.34 m),
no prompt, through the run-time engine, a row a tile: the real aerial; its layout (make eval's palette) and the
tile generated from it; the real aerial 4x area-averaged (the guide, shown enlarged) and the tile generated from it
(super-resolution); the real aerial with its centre quarter masked and the inpainted tile; a variation of the real
aerial at strength 0.5. Seeds 1, 2, ... a row.
swellendam: 1 km2 around Swellendam's centre (EPSG:32734, [448300, 6233550, 449300, 6234550]) as a large-area
batch job (the batch door, in this process) from the real OSM roads (buffer 3 m, class road) and buildings of the
QGIS training data (DATA/demo/training_data.gpkg), written as a COG beside the JPEG; the layout is drawn small on
the right (roads white, buildings red) so the image can be read against it.
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

DEFAULT_CLASSES = ("DenseResidential,MediumResidential,SparseResidential,Industrial,Commercial,Parking,Farmland,"
                   "Forest,Meadow,BareLand,River,Pond,Beach,Port,Airport,Playground")
SWELLENDAM_BBOX = (448300.0, 6233550.0, 449300.0, 6234550.0)  # EPSG:32734, 1 x 1 km around the town centre


def _font(size: int):
    from PIL import ImageFont

    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",):
        if os.path.isfile(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default()


def real_scene(data: str, cls: str, px: int) -> np.ndarray:
    """A held-out real AID scene of the class (the evaluation's test split), resampled to px."""
    from PIL import Image

    from rsgen_qgis.training.data import load_aid

    test = load_aid(data, "test", os.path.join(ROOT, "runs", "cache"))
    k = list(test["classes"]).index(cls)
    im = test["images"][np.flatnonzero(test["labels"] == k)[0]]
    return np.asarray(Image.fromarray(im).resize((px, px), Image.BICUBIC))


def classes(a) -> None:
    from PIL import Image, ImageDraw

    from rsgen_qgis.training.judge import class_tiles, model_settings

    names = [c.strip() for c in a.classes.split(",") if c.strip()]
    s = model_settings(a.model, a.steps, None, None, None)
    res = class_tiles(a.model, names, a.per_class, s["steps"], s["guidance"], s["sampler"], threads=a.threads,
                      gsd=a.gsd)
    tiles, info = res["tiles"], res["info"]
    px, gap, margin = tiles.shape[1], 4, 170
    w = margin + (a.per_class + 1) * (px + gap) + gap * 3
    canvas = Image.new("RGB", (max(w, 760), len(names) * (px + gap) + 56), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(16)
    draw.text((8, 8), f"{info['id']} {info['version']}: {px} px over 600 m ({info['gsd_m']:.2f} m), "
                      f"{info['steps']} steps, guidance {info['guidance']},\nseeds 1000k+i; last column: a real held-out "
                      "AID scene of the class", fill="black", font=font)
    for i, c in enumerate(names):
        y = 52 + i * (px + gap)
        draw.text((8, y + px // 2 - 10), c, fill="black", font=font)
        for j, t in enumerate(tiles[i * a.per_class:(i + 1) * a.per_class]):
            canvas.paste(Image.fromarray(t), (margin + j * (px + gap), y))
        canvas.paste(Image.fromarray(real_scene(a.data, c, px)), (margin + a.per_class * (px + gap) + gap * 3, y))
    canvas.save(a.out, quality=90)
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump({"classes": names, **info}, f, indent=1)
    print(f"wrote {a.out} ({canvas.size[0]} x {canvas.size[1]} px), {info['s_per_tile']} s a tile")


def conditions(a) -> None:
    from PIL import Image, ImageDraw

    from rsgen_qgis.core.engine.generate import generate_array
    from rsgen_qgis.core.request import Conditions, GenerationRequest
    from rsgen_qgis.training.data import MAPS_GSD_256, NYC_LONLAT, load_maps
    from rsgen_qgis.training.evaluate import LAYOUT_PALETTE
    from rsgen_qgis.training.fidelity import _utm_for
    from rsgen_qgis.training.judge import model_settings

    va = load_maps(a.data, "val", os.path.join(ROOT, "runs", "cache"))
    s = model_settings(a.model, None, None, None, None)
    crs, x, y = _utm_for(*NYC_LONLAT)
    px = va["aerial"].shape[1]
    gsd = MAPS_GSD_256 * 256 / px
    x0, y0 = round(x / gsd) * gsd, round(y / gsd) * gsd
    t0, info = time.time(), None

    def gen(seed: int, cond: Conditions) -> np.ndarray:
        nonlocal info
        req = GenerationRequest(extent=(x0, y0, x0 + px * gsd, y0 + px * gsd), crs=crs, gsd=gsd, output="", seed=seed,
                                steps=s["steps"], guidance=s["guidance"], sampler=s["sampler"], model=a.model,
                                conditions=cond)
        r = generate_array(req, providers=["CPUExecutionProvider"], threads=a.threads)
        info = info or r
        return r.rgb.transpose(1, 2, 0)

    heads = ("real aerial", "layout", "from layout", "guide (4x coarser)", "from guide", "centre masked",
             "inpainted", "variation 0.5")
    rows = []
    for i in range(a.tiles):
        real, lay = va["aerial"][i], va["layout"][i].astype(np.uint8)
        chw = np.ascontiguousarray(real.transpose(2, 0, 1))
        guide = chw.reshape(3, px // 4, 4, px // 4, 4).mean((2, 4)).round().astype(np.uint8)
        mask = np.zeros((px, px), bool)
        mask[px // 4:3 * px // 4, px // 4:3 * px // 4] = True
        masked = real.copy()
        masked[mask] = 128
        rows.append([real, LAYOUT_PALETTE[lay].astype(np.uint8), gen(i + 1, Conditions(layout=lay)),
                     np.repeat(np.repeat(guide.transpose(1, 2, 0), 4, 0), 4, 1), gen(i + 1, Conditions(guide=guide)),
                     masked, gen(i + 1, Conditions(mask=mask, image=chw)),
                     gen(i + 1, Conditions(image=chw, strength=0.5))])
    gap, top = 4, 60
    canvas = Image.new("RGB", (len(heads) * (px + gap) + gap, top + a.tiles * (px + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    m = f"{info.model_id} {info.model_version}"
    draw.text((gap, 4), f"{m}: held-out New York maps tiles, {px} px over {px * gsd:.0f} m ({gsd:.2f} m), no prompt, "
                        f"{s['steps']} steps, guidance {s['guidance']}, {s['sampler']}", fill="black", font=font)
    for j, h in enumerate(heads):
        draw.text((gap + j * (px + gap), 34), h, fill="black", font=font)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas.paste(Image.fromarray(im), (gap + j * (px + gap), top + i * (px + gap)))
    canvas.save(a.out, quality=90)
    print(f"wrote {a.out} ({canvas.size[0]} x {canvas.size[1]} px) in {time.time() - t0:.0f} s")


def swellendam(a) -> None:
    import rasterio
    import yaml
    from PIL import Image, ImageDraw

    from rsgen_qgis.batch.cli import main as batch_main

    gpkg = os.path.join(os.path.abspath(a.data), "demo", "training_data.gpkg")
    if not os.path.isfile(gpkg):
        sys.exit(f"{gpkg} is missing: run ../shared/tools/prepare-data with --qgis")
    work = os.path.splitext(os.path.abspath(a.out))[0] + "_job"
    os.makedirs(work, exist_ok=True)
    job = {"output": os.path.join(work, "out"), "crs": "EPSG:32734", "gsd": a.gsd, "model": os.path.abspath(a.model),
           "seed": a.seed, "prompt": a.prompt, "aois": {"bboxes": [{"bbox": list(SWELLENDAM_BBOX)}]},
           "layout": [{"file": gpkg, "layer": "roads", "class": "road", "buffer": 3},
                      {"file": gpkg, "layer": "buildings", "class": "building"}]}
    if a.guidance is not None:
        job["guidance"] = a.guidance
    spec = os.path.join(work, "job.yaml")
    with open(spec, "w") as f:
        yaml.safe_dump(job, f)
    t0 = time.time()
    rc = batch_main(["batch", spec, "--workers", "0", "--quiet"])
    secs = time.time() - t0
    if rc:
        sys.exit(f"the batch job failed ({rc})")
    with rasterio.open(os.path.join(job["output"], "mosaic.vrt")) as src:
        rgb = src.read([1, 2, 3])
    img = Image.fromarray(rgb.transpose(1, 2, 0))
    lay = layout_image(gpkg, os.path.join(job["output"], "mosaic.vrt"))
    small = lay.resize((lay.width // 2, lay.height // 2), Image.NEAREST)
    canvas = Image.new("RGB", (img.width + small.width + 8, max(img.height, small.height) + 28), "white")
    canvas.paste(img, (0, 28))
    canvas.paste(small, (img.width + 8, 28))
    ImageDraw.Draw(canvas).text((4, 4), f"Swellendam 1 km2 at {a.gsd:g} m, {os.path.basename(a.model)}, seed "
                                f"{a.seed}, prompt {a.prompt!r}, guidance {'default' if a.guidance is None else a.guidance}; right: the layout (roads, buildings)",
                                fill="black", font=_font(14))
    canvas.save(a.out, quality=90)
    print(f"wrote {a.out} ({img.width} x {img.height} px) in {secs:.0f} s")


def layout_image(gpkg: str, path_vrt: str):
    """The job's layout burned on the output grid by the batch door's own rasterizer (roads white, buildings red,
    background grey)."""
    import rasterio
    from PIL import Image

    from rsgen_qgis.batch.layout import VectorLayout
    from rsgen_qgis.core.conditions.encoding import LAYOUT_CLASSES
    from rsgen_qgis.core.geo.georef import Grid

    with rasterio.open(path_vrt) as src:
        grid = Grid(src.crs.to_wkt(), tuple(src.transform.to_gdal()), src.width, src.height)
    road, building = LAYOUT_CLASSES.index("road"), LAYOUT_CLASSES.index("building")
    lay = VectorLayout(((gpkg, "roads", road, 3.0), (gpkg, "buildings", building, 0.0)))(grid)
    pal = np.full((256, 3), 90, np.uint8)
    pal[road], pal[building] = (255, 255, 255), (220, 40, 40)
    return Image.fromarray(pal[lay])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("classes")
    s = sub.add_parser("swellendam")
    k = sub.add_parser("conditions")
    k.add_argument("--tiles", type=int, default=4)
    k.add_argument("--threads", type=int, default=1)
    for p in (c, s, k):
        p.add_argument("--data", required=True)
        p.add_argument("--model", default=os.path.join(ROOT, "models", "rsgen-base-1"))
        p.add_argument("--out", required=True)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--classes", default=DEFAULT_CLASSES)
    c.add_argument("--per-class", type=int, default=4)
    c.add_argument("--gsd", type=float, default=None, help="default: the model's native tile over 600 m")
    c.add_argument("--steps", type=int, default=None)
    s.add_argument("--gsd", type=float, default=2.0)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--prompt", default="")
    s.add_argument("--guidance", type=float, default=None,
                   help="default: the package's own (the batch door's since 2026-12-07; before, 3 and 20 steps)")
    a = ap.parse_args()
    {"classes": classes, "swellendam": swellendam, "conditions": conditions}[a.cmd](a)


if __name__ == "__main__":
    main()
