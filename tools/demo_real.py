"""Real-data demo of the conditions (not a test: it needs the QGIS training data and minutes of CPU).

    .venv/bin/python tools/demo_real.py [--data /work/data/demo] [--out out/demo_real] [--model rsgen-base-1]
                                        [--steps N] [--no-shots]

(a) Layout: the real OSM roads and buildings of Swellendam (training_data.gpkg, EPSG:4326) are reprojected to
    EPSG:32734 (GeoPackages written beside the results), rasterized by the default OSM rules onto a 2.5 m grid
    around the town centre, and an image is generated conditioned on that layout with --model (default the bundled
    default model, rsgen-base-1; --model rsgen-base for the 64 px pixel model) at the package's own default steps,
    guidance and sampler (as the dock), unless --steps is given.
(b) Inpainting: a crop of the real orthophoto (EPSG:4326, its own grid) is regenerated inside four real building
    polygons; pixels outside are checked byte-identical, and the seam at the mask border is measured (below).
(c) Dataset: rsgen:dataset (through processing.run) makes 4 images of 96 x 96 px at 4 m over random extents of the
    layout area, conditioned on the real buildings as boxes (+ the roads as layout), exports COCO/DOTA/GeoJSON and
    runs the box filter with the segmentation net of tools/export_segnet.py when out/segnet.onnx exists.
Then QGIS itself (qgis.bin under Xvfb, tools/screenshot_map.py) renders both results with the vector layers on top.

Seam metric: the mean absolute grey-level difference between 4-neighbour pixel pairs that straddle the mask border
(one inside, one outside), divided by the same mean over pairs that both lie outside the mask within 2..8 px of it
(the image's own texture near the mask). 1.0 = the border is as smooth as the surroundings. It is reported for the
source orthophoto (its real building outlines), the plugin's result (seamless correction + feathered blend), the same
sampling without the seamless correction (core.conditions.seamless off for one run: same seed, same model) and pasted with a
hard mask as well (inpaint.feather replaced by the bare mask) as the visible-edge reference.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from rsgen_qgis.core.request import DEFAULT_MODEL  # noqa: E402  (core: no QGIS, no torch)

TOWN = (20.4440, -34.0330)  # lon, lat near Swellendam's centre (Voortrek Street)
HALF_M, GSD = 500.0, 2.5     # a 1 km square at 2.5 m: 400 x 400 px
CROP = (20.5153, -34.0294, 20.5217, -34.0358)  # ulx, uly, lrx, lry of the orthophoto crop (256 x 256 px)
INPAINT_FIDS = (4484, 4510, 4513, 4506)       # four real buildings inside the crop
BUFFER_M = 6.0  # second mask: the same buildings grown by 6 m, so its border runs on open ground (and shadows go)
LAYOUT_PROMPT = "aerial view of buildings and streets"  # the wording of the layout tiles' training captions
INPAINT_PROMPT = "a satellite image of grass and trees"


def seam_ratio(img, mask):
    """Border-pair difference / near-outside-pair difference on the grey image (see the module docstring)."""
    import numpy as np

    g = img.astype(np.float64).mean(0)
    m = mask.astype(bool)
    # distance to the mask (4-neighbour steps), up to 8
    dist = np.where(m, 0, 99)
    cur = m.copy()
    for d in range(1, 9):
        grown = cur.copy()
        grown[1:] |= cur[:-1]; grown[:-1] |= cur[1:]; grown[:, 1:] |= cur[:, :-1]; grown[:, :-1] |= cur[:, 1:]
        dist[grown & ~cur] = d
        cur = grown
    border, ref = [], []
    for a, b, ma, mb, da, db in ((g[:, :-1], g[:, 1:], m[:, :-1], m[:, 1:], dist[:, :-1], dist[:, 1:]),
                                 (g[:-1], g[1:], m[:-1], m[1:], dist[:-1], dist[1:])):
        diff = np.abs(a - b)
        border.append(diff[ma != mb])
        near = (~ma) & (~mb) & (da >= 2) & (db >= 2) & (da <= 8) & (db <= 8)
        ref.append(diff[near])
    border, ref = np.concatenate(border), np.concatenate(ref)
    return float(border.mean() / ref.mean()), float(border.mean()), float(ref.mean())


def reproject(src_uri, name, crs, path):
    from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsVectorFileWriter,
                           QgsVectorLayer)

    layer = QgsVectorLayer(src_uri, name, "ogr")
    assert layer.isValid(), src_uri
    opts = QgsVectorFileWriter.SaveVectorOptions()
    opts.driverName = "GPKG"
    opts.layerName = name
    opts.ct = QgsCoordinateTransform(layer.crs(), QgsCoordinateReferenceSystem(crs), QgsProject.instance())
    err = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, QgsProject.instance().transformContext(), opts)
    assert err[0] == QgsVectorFileWriter.NoError, err
    out = QgsVectorLayer(path, name, "ogr")
    assert out.isValid() and out.crs().authid() == crs
    return out


def model_settings(model: str, steps: int) -> dict:
    """The request settings the dock would use for `model`: its package's defaults; steps overridden when > 0."""
    from rsgen_qgis.core.runtime.sampling_defaults import resolve

    return {"model": model, **resolve(model, (), steps=steps or None)}


def layout_demo(data, out, settings, log):
    import numpy as np

    from rsgen_qgis.core.geo import projdata  # noqa: F401
    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.request import Conditions, GenerationRequest
    from rsgen_qgis.core.conditions.rules import DEFAULT_OSM_RULES
    from rsgen_qgis.core.geo.georef import grid_for_request
    from rsgen_qgis.gis.rasterize import layers_to_layout, stats_message, write_layout

    import pyproj

    gpkg = os.path.join(data, "training_data.gpkg")
    roads = reproject(f"{gpkg}|layername=roads", "roads", "EPSG:32734", os.path.join(out, "roads_32734.gpkg"))
    buildings = reproject(f"{gpkg}|layername=buildings", "buildings", "EPSG:32734",
                          os.path.join(out, "buildings_32734.gpkg"))
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32734", always_xy=True).transform(*TOWN)
    x, y = round(x / GSD) * GSD, round(y / GSD) * GSD
    req = GenerationRequest(extent=(x - HALF_M, y - HALF_M, x + HALF_M, y + HALF_M), crs="EPSG:32734",
                            output=os.path.join(out, "layout_generated.tif"), gsd=GSD, prompt=LAYOUT_PROMPT,
                            seed=7, **settings)
    grid = grid_for_request(req)
    layout, stats = layers_to_layout([roads, buildings], DEFAULT_OSM_RULES, grid)
    log["layout"] = {"extent": list(grid.bounds), "size": [grid.width, grid.height], "gsd_m": GSD,
                     "stats": stats_message(stats),
                     "class_fractions": {n: round(float((layout == i).mean()), 4)
                                         for i, n in enumerate(("background", "road", "major_road", "building",
                                                                "vegetation", "water"))}}
    write_layout(os.path.join(out, "layout_classes.tif"), layout, grid)
    print(log["layout"]["stats"], flush=True)
    t0 = time.time()
    res = generate(req.replace(conditions=Conditions(layout=layout)),
                   progress=lambda f, m: print(f"\r  layout: {m}   ", end="", flush=True))
    print()
    log["layout"].update(seconds=round(time.time() - t0, 1), provider=res.provider, output=res.path)
    from osgeo import gdal

    grey = gdal.Open(res.path).ReadAsArray().astype(np.float64).mean(0)  # does the image follow the layout?
    log["layout"]["mean_grey_by_class"] = {n: round(float(grey[layout == i].mean()), 1) for i, n in
                                           enumerate(("background", "road", "major_road", "building"))
                                           if (layout == i).any()}
    return res.path


def inpaint_demo(data, out, settings, log):
    import numpy as np
    from osgeo import gdal
    from qgis.core import QgsFeatureRequest, QgsRasterLayer, QgsVectorLayer

    from rsgen_qgis.core.engine import generate as pipeline, inpaint
    from rsgen_qgis.core.request import Conditions
    from rsgen_qgis.gis.rasters import mask_from_polygons, raster_grid, read_rgb, request_on_grid

    crop = os.path.join(out, "ortho_crop.tif")
    gdal.Translate(crop, os.path.join(data, "orthophoto.tif"), projWin=list(CROP), bandList=[1, 2, 3],
                   creationOptions=["COMPRESS=DEFLATE"])
    raster = QgsRasterLayer(crop, "orthophoto crop")
    src = QgsVectorLayer(f"{os.path.join(data, 'training_data.gpkg')}|layername=buildings", "buildings", "ogr")
    chosen = src.materialize(QgsFeatureRequest().setFilterFids(list(INPAINT_FIDS)))
    chosen.setName("inpainted buildings")
    mask_path = write_gpkg(chosen, os.path.join(out, "inpaint_buildings.gpkg"))
    buffered = buffered_layer(chosen, BUFFER_M)
    buffered_path = write_gpkg(buffered, os.path.join(out, "inpaint_buildings_buffered.gpkg"))
    grid = raster_grid(raster)
    image, notes = read_rgb(raster)
    log["inpaint"] = {"raster": [grid.width, grid.height], "crs": "EPSG:4326", "buildings": len(INPAINT_FIDS),
                      "notes": notes, "seam_definition": "mean |grey diff| of 4-neighbour pairs across the mask "
                      "border / same over pairs outside the mask 2..8 px from it"}
    for label, layer in (("polygons", chosen), (f"polygons+{BUFFER_M:g}m", buffered)):
        mask = mask_from_polygons(layer, grid, target="the orthophoto crop")
        entry = log["inpaint"][label] = {"mask_pixels": int(mask.sum())}
        results = {}
        for kind in ("feathered", "no_seamless", "hard"):
            suffix = "" if label == "polygons" else "_buffered"
            path = os.path.join(out, f"inpainted{suffix}.tif" if kind == "feathered" else
                                f"inpainted{suffix}_{kind}.tif")
            saved = inpaint.feather, inpaint.seamless_fill
            if kind != "feathered":  # measurement only: the same sampling without the seamless correction
                inpaint.seamless_fill = lambda fill, known, m: fill
            if kind == "hard":  # ... and pasted without the feathered blend
                inpaint.feather = lambda m, width=4: (m > 0.5).astype(np.float32)
            try:
                t0 = time.time()
                res = pipeline.generate(request_on_grid(grid, path, prompt=INPAINT_PROMPT, seed=3, **settings,
                                                        conditions=Conditions(mask=mask, image=image)),
                                        progress=lambda f, m: print(f"\r  inpaint {label} ({kind}): {m}   ", end="",
                                                                    flush=True))
                print()
            finally:
                inpaint.feather, inpaint.seamless_fill = saved
            results[kind] = gdal.Open(res.path).ReadAsArray()
            entry[f"{kind}_seconds"] = round(time.time() - t0, 1)
        out_img = results["feathered"]
        entry["outside_identical"] = bool(np.array_equal(out_img[:, ~mask], image[:, ~mask]))
        entry["inside_mean_abs_change"] = round(float(np.abs(out_img[:, mask].astype(int) - image[:, mask]).mean()), 2)
        entry["seam"] = {k: dict(zip(("ratio", "border_diff", "near_outside_diff"),
                                     [round(v, 3) for v in seam_ratio(a, mask)]))
                         for k, a in (("source", image), ("feathered", out_img),
                                      ("feathered_no_seamless", results["no_seamless"]), ("hard_mask", results["hard"]))}
    return crop, mask_path, buffered_path, os.path.join(out, "inpainted_buffered.tif")


def dataset_demo(out, settings, log, segnet):
    """rsgen:dataset on the real buildings, with the real model, through Processing: once with the package's own
    (absent) segmentation net, so the filter reports itself unavailable and keeps all, once with SEGNET."""
    if "/usr/share/qgis/python/plugins" not in sys.path:
        sys.path.append("/usr/share/qgis/python/plugins")  # QGIS's own Processing plugin
    import processing
    from processing.core.Processing import Processing
    from pycocotools.coco import COCO
    from qgis.core import QgsApplication, QgsProcessingException

    from rsgen_qgis.processing.provider import RsgenProvider

    Processing.initialize()
    provider = RsgenProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    xmin, ymin, xmax, ymax = log["layout"]["extent"]
    base = {"AOI": f"{xmin},{xmax},{ymin},{ymax} [EPSG:32734]", "COUNT": 4, "GSD": 4.0, "SIZE": 96,
            "BOXES": os.path.join(out, "buildings_32734.gpkg"), "BOX_FIELD": "building", "MIN_BOXES": 3,
            "LAYERS": [os.path.join(out, "roads_32734.gpkg")], "PROMPT": "aerial view of buildings and streets",
            "MODEL": settings["model"], "SEED": 11, "STEPS": settings["steps"], "FILTER": True}
    runs = {"package_net": {}}
    if segnet and os.path.isfile(segnet):
        runs["segnet"] = {"SEGNET": segnet}
    log["dataset"] = {"params": {k: v for k, v in base.items() if k not in ("BOXES", "LAYERS")}}
    try:
        for name, extra in runs.items():
            params = dict(base, **extra, OUTPUT_FOLDER=os.path.join(out, f"dataset_{name}"))
            entry = log["dataset"][name] = dict(extra)
            try:
                res = processing.run("rsgen:dataset", params)
            except QgsProcessingException as exc:  # e.g. the filter dropped every sample: that is a result
                entry["error"] = str(exc)
                continue
            coco = COCO(res["COCO"])  # the reference reader
            entry.update({k: res[k] for k in ("GENERATED", "KEPT", "FILTER_STATUS")})
            entry.update(coco_images=len(coco.getImgIds()), coco_annotations=len(coco.getAnnIds()),
                         coco_categories=[c["name"] for c in coco.loadCats(coco.getCatIds())])
    finally:
        QgsApplication.processingRegistry().removeProvider(provider)


def dataset_figure(out, path):
    """The first dataset image at 4x with its DOTA boxes drawn from the label file (checks labels vs pixels)."""
    from osgeo import gdal
    from PIL import Image, ImageDraw

    d = os.path.join(out, "dataset_package_net")
    a = gdal.Open(os.path.join(d, "images", "sample_0001.tif")).ReadAsArray().transpose(1, 2, 0)
    im = Image.fromarray(a).resize((a.shape[1] * 4, a.shape[0] * 4), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    with open(os.path.join(d, "dota", "sample_0001.txt")) as f:
        for line in f.read().splitlines()[2:]:
            p = [float(v) * 4 for v in line.split()[:8]]
            draw.polygon(list(zip(p[::2], p[1::2])), outline=(255, 40, 40))
    im.save(path, quality=88)


def write_gpkg(layer, path):
    from qgis.core import QgsProject, QgsVectorFileWriter

    opts = QgsVectorFileWriter.SaveVectorOptions()
    opts.driverName = "GPKG"
    err = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, QgsProject.instance().transformContext(), opts)
    assert err[0] == QgsVectorFileWriter.NoError, err
    return path


def buffered_layer(layer, metres):
    """The polygons grown by `metres`, buffered in UTM 34S (metres) and kept there: the mask reprojects anyway."""
    from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature, QgsProject,
                           QgsVectorLayer)

    utm = QgsCoordinateReferenceSystem("EPSG:32734")
    xf = QgsCoordinateTransform(layer.crs(), utm, QgsProject.instance())
    out = QgsVectorLayer("MultiPolygon?crs=EPSG:32734", f"buildings + {metres:g} m", "memory")
    feats = []
    for f in layer.getFeatures():
        g = f.geometry()
        g.transform(xf)
        nf = QgsFeature()
        nf.setGeometry(g.buffer(metres, 8))
        feats.append(nf)
    out.dataProvider().addFeatures(feats)
    out.updateExtents()
    return out



def shots(out, layout_tif, inpainted, mask_path, buffered_path, log, ext="jpg"):
    """Two QGIS windows rendered under Xvfb by tools/screenshot_map.py (real qgis.bin, real renderer)."""
    img = os.path.join(ROOT, "docs", "img")
    specs = {
        f"conditions_layout.{ext}": {
            "crs": "EPSG:32734", "extent": log["layout"]["extent"], "layers": [
                {"path": layout_tif, "name": f"Generated from the layout ({log.get('model', DEFAULT_MODEL)})"},
                {"path": os.path.join(out, "roads_32734.gpkg"), "name": "roads (OSM)", "line": "#ffd400",
                 "width": 0.4},
                {"path": os.path.join(out, "buildings_32734.gpkg"), "name": "buildings (OSM)", "outline": "#ff2a2a",
                 "width": 0.3}]},
        f"conditions_inpaint.{ext}": {
            "crs": "EPSG:4326", "extent": [CROP[0], CROP[3], CROP[2], CROP[1]], "layers": [
                {"path": inpainted, "name": "Orthophoto inpainted inside 4 buildings (+6 m)"},
                {"path": buffered_path, "name": "mask: buildings + 6 m", "outline": "#00e5ff", "width": 0.3},
                {"path": mask_path, "name": "building polygons (OSM)", "outline": "#ffd400", "width": 0.5}]},
    }
    for name, spec in specs.items():
        spec_path = os.path.join(out, name + ".json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "screenshot_map.py"), spec_path,
                        os.path.join(img, name)], check=True)


def strip(out, path):
    """Before / inpainted (polygons) / inpainted (polygons + 6 m), side by side at 2x: the seam at a glance."""
    import numpy as np
    from osgeo import gdal
    from PIL import Image

    tiles = [gdal.Open(os.path.join(out, n)).ReadAsArray()[:3] for n in
             ("ortho_crop.tif", "inpainted.tif", "inpainted_buffered.tif")]
    gap = np.full((3, tiles[0].shape[1], 6), 255, np.uint8)
    im = np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], 2).transpose(1, 2, 0)
    Image.fromarray(im).save(path, quality=88)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "demo"),
                    help="the demo/ folder written by ../shared/tools/prepare-data (default: data/demo)")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "demo_real"))
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"model package id (default: the bundled {DEFAULT_MODEL})")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps (default: the model's own)")
    ap.add_argument("--no-shots", action="store_true")
    ap.add_argument("--shots-only", action="store_true", help="only render the screenshots of an earlier run")
    ap.add_argument("--dataset-only", action="store_true", help="only (c), after an earlier run")
    ap.add_argument("--segnet", default=os.path.join(ROOT, "out", "segnet.onnx"),
                    help="segmentation net for the dataset filter (tools/export_segnet.py)")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if a.shots_only:
        with open(os.path.join(a.out, "demo_real.json")) as f:
            log = json.load(f)
        o = a.out
        shots(o, os.path.join(o, "layout_generated.tif"), os.path.join(o, "inpainted_buffered.tif"),
              os.path.join(o, "inpaint_buildings.gpkg"), os.path.join(o, "inpaint_buildings_buffered.gpkg"), log)
        strip(o, os.path.join(ROOT, "docs", "img", "conditions_inpaint_strip.jpg"))
        return 0
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    if a.dataset_only:
        with open(os.path.join(a.out, "demo_real.json")) as f:
            log = json.load(f)
        dataset_demo(a.out, model_settings(a.model, a.steps), log, a.segnet)
        dataset_figure(a.out, os.path.join(ROOT, "docs", "img", "conditions_dataset_sample.jpg"))
        with open(os.path.join(a.out, "demo_real.json"), "w") as f:
            json.dump(log, f, indent=1)
        print(json.dumps(log["dataset"], indent=1))
        return 0
    settings = model_settings(a.model, a.steps)
    log = dict(settings)
    layout_tif = layout_demo(a.data, a.out, settings, log)
    crop, mask_path, buffered_path, inpainted = inpaint_demo(a.data, a.out, settings, log)
    dataset_demo(a.out, settings, log, a.segnet)
    with open(os.path.join(a.out, "demo_real.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(json.dumps(log, indent=1))
    if not a.no_shots:
        shots(a.out, layout_tif, inpainted, mask_path, buffered_path, log)
        strip(a.out, os.path.join(ROOT, "docs", "img", "conditions_inpaint_strip.jpg"))
        dataset_figure(a.out, os.path.join(ROOT, "docs", "img", "conditions_dataset_sample.jpg"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
