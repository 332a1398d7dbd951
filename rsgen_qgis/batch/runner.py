"""Batch runner: a job spec -> world-anchored tiles -> per-tile COGs, a VRT mosaic and a JSON manifest.

Tiles sit on the world pixel grid of the job's GSD (tile (i, j) = world rows [i*P, (i+1)*P), columns
[j*P, (j+1)*P)); each is one large-area request (core.engine.blocks), a pure function of the job and the tile's
place, so neighbouring tiles join without a seam and a tile made twice is the same bytes.

Crash safety: a tile's COG is renamed into place only when complete (core.geo.geotiff), and the manifest, which
is the only record of what is done, is rewritten atomically (temp file + rename) after each tile *after* its
file is in place and hashed. A tile whose write fails (full disk...) is never recorded. After a kill -9 the next
run reads the manifest, checks every recorded tile's size and sha256, removes stale partial files, adopts a
tile that was renamed into place but not yet recorded (its provenance tags must name exactly this tile's
request and model) and does the rest: every tile is done exactly once and the bytes equal an uninterrupted
run's.

Scale-out: Dask distributed. A LocalCluster of worker processes by default (`--workers N`), or an existing
cluster (`--scheduler tcp://host:port`, workers need this package importable and the model reachable). Each
worker process keeps its ONNX session warm (core.runtime.models caches loaded models per process), so only the first
tile on a worker pays for loading. `--workers 0` runs in this process without Dask.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..core.conditions.encoding import CondLayout
from ..core.engine import autoguide
from ..core.engine.classguide import ClassGuideSpec, recorded_scale
from ..core.errors import OutputError, RsgenError
from ..core.geo.geotiff import PROBE_PREFIX, check_writable
from ..core.runtime.models import sha256_file
from ..core.request import GenerationRequest
from .lock import JobLock
from .spec import JobSpec, JobSpecError

MANIFEST = "manifest.json"
FORMAT = "rsgen-batch-manifest/1"


class BatchError(RsgenError):
    """Some tiles failed; the manifest lists the ones that are done, a rerun does the rest."""


@dataclass(frozen=True)
class Tile:
    row: int
    col: int
    prompt: str
    aoi: str
    window: Optional[Tuple[int, int, int, int]] = None  # (col0, row0, col1, row1) pixels of the tile generated


    @property
    def key(self) -> str:
        return f"r{self.row}_c{self.col}"

    def extent(self, pitch: int, gsd: float) -> Tuple[float, float, float, float]:
        """World row r is the pixel whose top edge is at y = -r * gsd (the grid's world_offset convention)."""
        s = pitch * gsd
        c0, r0, c1, r1 = self.window or (0, 0, pitch, pitch)
        x0, top = self.col * s, -self.row * s
        return (x0 + c0 * gsd, top - r1 * gsd, x0 + c1 * gsd, top - r0 * gsd)


# ---------------------------------------------------------------- AOIs and tile grid

def _ogr_geom_in(crs_from: str, crs_to: str):
    from osgeo import osr

    a, b = osr.SpatialReference(), osr.SpatialReference()
    for s, text in ((a, crs_from), (b, crs_to)):
        if s.SetFromUserInput(text) != 0:
            raise JobSpecError(f"crs: cannot read {text!r}.")
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return osr.CoordinateTransformation(a, b)


def aoi_geometries(spec: JobSpec) -> List[Tuple[object, Optional[str], str]]:
    """(ogr geometry in the job CRS, prompt or None, name) for every AOI, file features first."""
    from osgeo import ogr, osr

    ogr.UseExceptions()
    out = []
    if spec.aoi_file:
        try:
            ds = ogr.Open(spec.aoi_file)
        except RuntimeError as err:
            raise JobSpecError(f"aois.file: cannot open {spec.aoi_file}: {err}") from err
        if ds is None:
            raise JobSpecError(f"aois.file: cannot open {spec.aoi_file} as a vector file.")
        lyr = ds.GetLayerByName(spec.aoi_layer) if spec.aoi_layer else ds.GetLayer(0)
        if lyr is None:
            names = [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())]
            raise JobSpecError(f"aois.layer: {spec.aoi_file} has no layer {spec.aoi_layer!r} "
                               f"(layers: {', '.join(names) or 'none'}).")
        fields = [lyr.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(lyr.GetLayerDefn().GetFieldCount())]
        if spec.prompt_attribute and spec.prompt_attribute not in fields:
            raise JobSpecError(f"aois.prompt_attribute: {spec.aoi_file} has no field {spec.prompt_attribute!r} "
                               f"(fields: {', '.join(fields) or 'none'}).")
        srs = lyr.GetSpatialRef()
        ct = None
        if srs is not None:
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            ct = _ogr_geom_in(srs.ExportToWkt(), spec.crs)
        for n, feat in enumerate(lyr):
            g = feat.GetGeometryRef()
            if g is None or g.IsEmpty():
                continue
            g = g.Clone()
            if ct is not None:
                g.Transform(ct)
            prompt = feat.GetField(spec.prompt_attribute) if spec.prompt_attribute else None
            out.append((g, prompt if prompt not in ("", None) else None, f"feature{feat.GetFID()}"))
        if not out:
            raise JobSpecError(f"aois.file: {spec.aoi_file} (layer {lyr.GetName()!r}) has no features with a "
                               "geometry; nothing to generate.")
    for b in spec.bboxes:
        xmin, ymin, xmax, ymax = b.bbox
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in ((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)):
            ring.AddPoint_2D(x, y)
        poly = ogr.Geometry(ogr.wkbPolygon)
        poly.AddGeometry(ring)
        if b.crs != spec.crs:
            poly.Segmentize(max(xmax - xmin, ymax - ymin) / 20.0)
            poly.Transform(_ogr_geom_in(b.crs, spec.crs))
        out.append((poly, b.prompt, b.name))
    return out


def plan_tiles(spec: JobSpec, pitch: int) -> List[Tile]:
    """World tiles that meet an AOI; a tile takes the prompt of the first AOI (in spec order) it meets. With
    spec.clip_tiles a tile covers only the pixels of its part of the AOIs' bounding boxes (snapped outward to
    whole pixels), not its whole square: the pixels are the same (world-anchored), the work is what was asked."""
    from osgeo import ogr

    s, g = pitch * spec.gsd, spec.gsd
    tiles: Dict[Tuple[int, int], Tile] = {}
    for geom, prompt, name in aoi_geometries(spec):
        xmin, xmax, ymin, ymax = geom.GetEnvelope()
        for i in range(math.floor(-ymax / s), math.ceil(-ymin / s)):
            for j in range(math.floor(xmin / s), math.ceil(xmax / s)):
                t = tiles.get((i, j)) or Tile(i, j, prompt if prompt is not None else spec.prompt, name)
                x0, y0, x1, y1 = Tile(i, j, "", "").extent(pitch, g)
                box = ogr.CreateGeometryFromWkt(f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))")
                if not box.Intersects(geom):
                    continue
                if spec.clip_tiles:
                    a, b, c, d = geom.Intersection(box).GetEnvelope()  # xmin, xmax, ymin, ymax
                    win = (max(0, math.floor((a - x0) / g + 1e-9)), max(0, math.floor((y1 - d) / g + 1e-9)),
                           min(pitch, math.ceil((b - x0) / g - 1e-9)), min(pitch, math.ceil((y1 - c) / g - 1e-9)))
                    if win[2] <= win[0] or win[3] <= win[1]:
                        continue  # touches the tile along an edge only
                    if t.window is not None:
                        w = t.window
                        win = (min(w[0], win[0]), min(w[1], win[1]), max(w[2], win[2]), max(w[3], win[3]))
                    t = dataclasses.replace(t, window=win)
                tiles[(i, j)] = t
    return [tiles[k] for k in sorted(tiles)]


def tile_request(spec: JobSpec, tile: Tile, pitch: int, out_dir: str) -> GenerationRequest:
    """The tile's request; `spec` has its model's defaults filled in (with_model_defaults, as run() does)."""
    left = [k for k in ("steps", "guidance", "sampler") if getattr(spec, k) is None]
    if left:
        raise ValueError(f"tile_request: {', '.join(left)} not resolved (batch.runner.with_model_defaults first)")
    return GenerationRequest(extent=tile.extent(pitch, spec.gsd), crs=spec.crs, gsd=spec.gsd, prompt=tile.prompt,
                             seed=spec.seed, steps=spec.steps, guidance=spec.guidance, sampler=spec.sampler,
                             model=spec.model, date=spec.date, large_area=True, block_windows=spec.block_windows,
                             precision=spec.precision,
                             output=os.path.join(out_dir, "tiles", tile.key + ".tif"))


# ---------------------------------------------------------------- one tile (runs on a worker)

def run_tile(task: dict) -> dict:
    """Generate one tile (a plain-data task, so it travels to Dask workers); returns what the manifest records."""
    from ..core.runtime import models
    from ..core.engine.generate import generate

    req = GenerationRequest.from_dict(task["request"])
    layout = None
    if task.get("layout"):
        from .layout import VectorLayout

        layout = VectorLayout.from_dict(task["layout"])
    res = generate(req, model_dirs=task.get("model_dirs", ()), providers=task.get("providers"),
                   threads=task.get("threads", 0), layout_source=layout)
    loaded = models.load(req.model, task.get("model_dirs", ()), task.get("providers"), task.get("threads", 0),
                         req.precision)
    return {"key": task["key"], "path": res.path, "sha256": sha256_file(res.path), "bytes": os.path.getsize(res.path),
            "seconds": round(res.seconds, 3), "windows": res.stats.windows if res.stats else None,
            "warnings": list(res.warnings), "worker_pid": os.getpid(), "session_id": id(loaded.denoiser)}


# ---------------------------------------------------------------- manifest

def write_json_atomic(path: str, data: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.partial-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def package_identity(pkg) -> str:
    """sha256 of the package's manifest (canonical JSON), which lists every file's sha256: a weak model or a prompt
    bank added to the same denoiser changes it, as a new denoiser does."""
    return hashlib.sha256(json.dumps(pkg.manifest, sort_keys=True).encode()).hexdigest()


def _job_identity(spec: JobSpec) -> str:
    d = spec.to_dict()
    d.pop("path", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _tile_ok(out_dir: str, rec: dict) -> bool:
    p = os.path.join(out_dir, rec["path"])
    return os.path.isfile(p) and os.path.getsize(p) == rec["bytes"] and sha256_file(p) == rec["sha256"]


def _remove_stale_partials(out_dir: str) -> int:
    """Half-written tiles and manifests, and write probes, of a run that was killed (run() owns the folder)."""
    n = 0
    base = glob.escape(out_dir)
    for p in glob.glob(os.path.join(base, "tiles", ".*.partial-*")) + \
            glob.glob(os.path.join(base, f".{MANIFEST}.partial-*")) + \
            glob.glob(os.path.join(base, "tiles", PROBE_PREFIX + "*")) + \
            glob.glob(os.path.join(base, PROBE_PREFIX + "*")):
        try:
            os.remove(p)
            n += 1
        except OSError:
            pass
    return n


def adopt_finished(out_dir: str, task: dict, model_sha256: str,
                   default_class_guidance: Optional[float] = None,
                   default_autoguidance: Optional[float] = None) -> Optional[dict]:
    """A tile COG already at its final path but not in the manifest (killed between the rename and the
    manifest write) is complete, since only whole files are renamed into place; take it if its provenance tags
    say it was made from exactly this tile request and model. The tags record the request as it ran (class
    guidance left to the model as the model's default, core.engine.classguide.recorded_scale, and autoguidance
    likewise, core.engine.autoguide.recorded): it is compared with the task's request resolved the same way.
    Returns a manifest record, or None."""
    import rasterio

    path = task["request"]["output"]
    if not os.path.isfile(path):
        return None
    want = dict(task["request"], output=os.path.basename(path),
                class_guidance=recorded_scale(task["request"].get("class_guidance"), default_class_guidance))
    if want.get("autoguidance") is None:
        want["autoguidance"] = default_autoguidance
    try:
        with rasterio.open(path) as ds:
            tags = ds.tags()
        same = json.loads(tags.get("request", "null")) == json.loads(json.dumps(want)) and \
            tags.get("model_sha256") == model_sha256
    except Exception:  # unreadable or foreign file: regenerate it
        return None
    if not same:
        return None
    return {"key": task["key"], "path": path, "sha256": sha256_file(path), "bytes": os.path.getsize(path),
            "seconds": None, "windows": None, "worker_pid": None, "session_id": None, "adopted": True}


def gsd_warning(spec: JobSpec, model_manifest: dict, pitch: int, tile: Optional[Tile]) -> Optional[str]:
    """A warning naming the model's training GSD range when the job's GSD (in metres) is outside it."""
    from ..core.geo.georef import grid_for_request, gsd_metres_mean

    rng = (model_manifest.get("training", {}) or {}).get("gsd_range_m") or \
        ((model_manifest.get("conditions", {}).get("metadata_coverage", {}) or {}).get("gsd", {}) or {}).get("range")
    if not rng or tile is None:
        return None
    g = gsd_metres_mean(grid_for_request(tile_request(with_model_defaults(spec, model_manifest), tile, pitch,
                                                      spec.output)))
    if rng[0] <= g <= rng[1]:
        return None
    far = " far" if (g < rng[0] / 2 or g > rng[1] * 2) else ""
    return (f"gsd: {g:.3g} m per pixel is{far} outside the model's training range {rng[0]:g}-{rng[1]:g} m; "
            "results may be poor.")


# ---------------------------------------------------------------- the run

def build_vrt(out_dir: str, records: Dict[str, dict]) -> Optional[str]:
    """mosaic.vrt over the recorded tiles (GDAL BuildVRT), written atomically."""
    from osgeo import gdal

    if not records:
        return None
    gdal.UseExceptions()
    paths = [os.path.join(out_dir, records[k]["path"]) for k in sorted(records)]
    final = os.path.join(out_dir, "mosaic.vrt")
    tmp = os.path.join(out_dir, ".mosaic.vrt.partial")
    vrt = gdal.BuildVRT(tmp, paths)
    vrt.FlushCache()
    vrt = None
    # BuildVRT writes absolute paths; relative ones keep the folder movable
    text = open(tmp, encoding="utf-8").read()
    for p in paths:
        text = text.replace(f'relativeToVRT="0">{p}<', f'relativeToVRT="1">{os.path.relpath(p, out_dir)}<')
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, final)
    return final


def with_model_defaults(spec: JobSpec, manifest: dict) -> JobSpec:
    """The spec with the steps, guidance and sampler it leaves out taken from the model package's own defaults
    (core.runtime.sampling_defaults, as the dock and the CLI take them); what it gives is kept."""
    from ..core.runtime.sampling_defaults import fill

    return dataclasses.replace(spec, **fill(manifest, spec.steps, spec.guidance, spec.sampler))


def run(spec: JobSpec, workers: int = 1, scheduler: Optional[str] = None, progress: bool = True,
        providers: Optional[Sequence[str]] = None, log: Callable[[str], None] = None) -> dict:
    """Run (or resume) a job; returns the final manifest. Raises BatchError if some tiles failed."""
    from ..core.engine.blocks import BlockLayout
    from ..core.runtime.models import find

    log = log or (lambda m: print(m, file=sys.stderr))
    pkg = find(spec.model, spec.model_dirs)
    spec = with_model_defaults(spec, pkg.manifest)
    rng = CondLayout.from_manifest(pkg.manifest["conditions"]).guidance_range if pkg.interface == "rsgen" \
        else None
    if rng and not rng[0] <= spec.guidance <= rng[1]:
        raise JobSpecError(f"guidance: {spec.guidance:g} is outside {rng[0]:g}-{rng[1]:g}, the scales model {pkg.id!r} "
                           "has its guidance distilled for.")
    lay = BlockLayout.for_manifest(pkg.manifest, spec.block_windows, pkg.factor)
    pitch = spec.tile_px
    tiles = plan_tiles(spec, pitch)
    os.makedirs(os.path.join(spec.output, "tiles"), exist_ok=True)
    with JobLock(spec.output):  # one runner per folder (batch/lock.py): before any file in it is read or removed
        return _run_locked(spec, pkg, lay, pitch, tiles, workers, scheduler, progress, providers, log)


def _run_locked(spec: JobSpec, pkg, lay, pitch: int, tiles: List[Tile], workers: int, scheduler: Optional[str],
                progress: bool, providers: Optional[Sequence[str]], log: Callable[[str], None]) -> dict:
    """run()'s body, under the job folder's lock."""
    mpath = os.path.join(spec.output, MANIFEST)
    for p in (mpath, os.path.join(spec.output, "mosaic.vrt")):
        check_writable(p, geotiff=False)  # a link or a pipe in their place is refused, not replaced
    ident = _job_identity(spec)
    done: Dict[str, dict] = {}
    if os.path.exists(mpath):
        try:
            old = json.load(open(mpath, encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise OutputError(f"{mpath} exists but cannot be read ({err}); move it away to start over.") from err
        if old.get("job_identity") != ident:
            raise OutputError(f"{spec.output} holds the results of a different job spec; choose another output "
                              "folder or remove it.")
        was = old.get("model") if isinstance(old.get("model"), dict) else {}
        if was.get("package_sha256", package_identity(pkg)) != package_identity(pkg) or \
                was.get("sha256", pkg.denoiser_sha256) != pkg.denoiser_sha256:
            raise OutputError(f"{spec.output} was started with another version of model {pkg.id!r} (the package "
                              "has changed since: its graphs, weak model, prompt bank or defaults), so new tiles "
                              "would not match the ones made; choose another output folder, or remove it to start "
                              "over with this version.")
        done = {k: v for k, v in old.get("tiles", {}).items() if _tile_ok(spec.output, v)}
        if len(done) < len(old.get("tiles", {})):
            log(f"{len(old['tiles']) - len(done)} recorded tiles are missing or changed; they will be redone")
    _remove_stale_partials(spec.output)
    warnings = []
    w = gsd_warning(spec, pkg.manifest, pitch, tiles[0] if tiles else None)
    if w:
        warnings.append(w)
        log(f"warning: {w}")
    manifest = {"format": FORMAT, "job_identity": ident, "job": spec.to_dict(), "tile_px": pitch,
                "model": {"id": pkg.id, "sha256": pkg.denoiser_sha256, "package_sha256": package_identity(pkg)},
                "metadata_policy": pkg.manifest.get("conditions", {}).get("metadata_coverage", {}),
                "training_gsd_range_m": (pkg.manifest.get("training", {}) or {}).get("gsd_range_m"),
                "block_layout": {"tile": lay.tile, "overlap": lay.overlap, "block": lay.block, "band": lay.band},
                "warnings": warnings, "tiles_planned": len(tiles), "tiles": dict(done)}
    write_json_atomic(mpath, manifest)
    todo = [t for t in tiles if t.key not in done]
    threads = 0
    if workers > 0 and not scheduler:
        threads = max(1, (os.cpu_count() or 1) // workers)
    layout = None
    if spec.layout:
        from .layout import VectorLayout

        layout = VectorLayout.from_spec(spec).to_dict()
    tasks = [{"key": t.key, "request": tile_request(spec, t, pitch, spec.output).to_dict(),
              "model_dirs": list(spec.model_dirs), "providers": list(providers) if providers else None,
              "threads": threads, "layout": layout} for t in todo]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tiles), initial=len(tiles) - len(todo), unit="tile", desc="rsgen batch")
    failures: List[str] = []

    def record(res: dict) -> None:
        rec = {"path": os.path.relpath(res["path"], spec.output), "sha256": res["sha256"], "bytes": res["bytes"],
               "seconds": res["seconds"], "windows": res["windows"], "worker_pid": res["worker_pid"],
               "session_id": res["session_id"]}
        if res.get("adopted"):
            rec["adopted"] = True
        # the file must be there, whole, before the manifest may claim it
        if not _tile_ok(spec.output, rec):
            failures.append(f"{res['key']}: the written file does not match what the worker reported")
            return
        manifest["tiles"][res["key"]] = rec
        write_json_atomic(mpath, manifest)
        if bar is not None:
            bar.update(1)

    def failed(key: str, err: BaseException) -> None:
        failures.append(f"{key}: {err}")
        log(f"tile {key} failed: {err}")

    guide = pkg.manifest.get("class_guide")
    default_cg = ClassGuideSpec.from_manifest(guide).default_scale if guide else None
    pending = []
    for task in tasks:
        rec = adopt_finished(spec.output, task, pkg.denoiser_sha256, default_cg,
                             autoguide.recorded(None, pkg.manifest))
        if rec is not None:
            record(rec)
        else:
            pending.append(task)
    tasks = pending
    try:
        if not tasks:
            pass
        elif workers <= 0 and not scheduler:
            for task in tasks:
                try:
                    res = run_tile(task)
                except RsgenError as err:
                    failed(task["key"], err)
                    continue
                record(res)
        else:
            _run_dask(tasks, workers, scheduler, record, failed)
    finally:
        if bar is not None:
            bar.close()
        _remove_stale_partials(spec.output)
    build_vrt(spec.output, manifest["tiles"])
    if failures:
        raise BatchError(f"{len(failures)} of {len(tiles)} tiles failed (the manifest lists the "
                         f"{len(manifest['tiles'])} done; run again to resume): " + "; ".join(failures[:5]))
    return manifest


def _run_dask(tasks: List[dict], workers: int, scheduler: Optional[str], record, failed) -> None:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
    try:
        futures = {client.submit(run_tile, t, pure=False): t["key"] for t in tasks}
        for fut in as_completed(list(futures)):
            key = futures[fut]
            try:
                res = fut.result()
            except RsgenError as err:
                failed(key, err)
                continue
            except Exception as err:  # a worker died or raised something unexpected: report, keep going
                failed(key, err)
                continue
            record(res)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


__all__ = ["run", "plan_tiles", "run_tile", "Tile", "BatchError", "build_vrt", "write_json_atomic"]
