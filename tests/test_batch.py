"""Batch runner: job spec errors, AOIs, tiles + VRT + manifest, full disk, resume after kill -9, Dask."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import yaml

from rsgen_qgis.batch import runner, spec
from rsgen_qgis.batch.spec import JobSpecError
from rsgen_qgis.core.engine.generate import generate
from rsgen_qgis.core.request import GenerationRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 48 px tiles at 4 m = 192 m on the world grid: the box meets x 453120..453504, y 6233472..6233856 (2 x 2 tiles)
BOX = [453130.0, 6233600.0, 453500.0, 6233850.0]


def job(tmp_path, name="job.yaml", out="out", **over):
    d = {"output": out, "crs": "EPSG:32734", "gsd": 4.0, "model": "rsgen-tiny", "model_dirs": [over.pop("md")],
         "seed": 5, "steps": 2, "guidance": 1.0, "prompt": "houses", "tile_px": 48, "block_windows": 2,
         "aois": {"bboxes": [{"bbox": BOX, "prompt": "farmland"}]}}
    d.update(over)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return str(p)


def tile_bytes(out):
    t = os.path.join(out, "tiles")
    return {f: open(os.path.join(t, f), "rb").read() for f in sorted(os.listdir(t))}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("clean")
    s = spec.load(job(d, md=tiny_model_dir))
    man = runner.run(s, workers=0, progress=False)
    return s, man


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "colour: unknown key"),
    ({"gsd": "2m"}, "gsd: expected"),
    ({"seed": 1.5}, "seed: expected a whole number"),
    ({"aois": {"bboxes": [{"bbox": [0, 0, 1, 1], "promt": "x"}]}}, r"aois.bboxes\[0\].promt: unknown key"),
    ({"aois": {"bboxes": [{"bbox": [0, 0, 1]}]}}, r"aois.bboxes\[0\].bbox: expected four numbers"),
    ({"aois": {"bboxes": "0,0,1,1"}}, "aois.bboxes: expected a list"),
    ({"aois": {}}, "aois: give a vector file"),
    ({"layout": [{"file": "r.gpkg", "class": "lava"}]}, r"layout\[0\].class: 'lava' is not a layout class"),
    ({"output": None}, "output: missing"),
    ({"clip_tiles": "yes"}, "clip_tiles: expected true or false"),
    ({"precision": "int4"}, "precision: 'int4' is not one of auto, fp32"),
])
def test_spec_errors_name_the_key(tmp_path, change, message):
    d = {"output": "o", "crs": "EPSG:32734", "gsd": 4.0, "aois": {"bboxes": [{"bbox": BOX}]}}
    d.update(change)
    with pytest.raises(JobSpecError, match=message):
        spec.parse(d, str(tmp_path / "job.yaml"))


def test_yaml_date_and_relative_paths(tmp_path):
    (tmp_path / "job.yaml").write_text("output: out\ncrs: EPSG:32734\ngsd: 4\ndate: 2020-06-01\n"
                                       "aois: {file: aoi.gpkg}\n")
    s = spec.load(str(tmp_path / "job.yaml"))
    assert s.date == "2020-06-01" and s.output == str(tmp_path / "out") and s.aoi_file == str(tmp_path / "aoi.gpkg")


def _gpkg(path, polys, prompts=None):
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32734)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    lyr = ds.CreateLayer("aoi", srs, ogr.wkbPolygon)
    lyr.CreateField(ogr.FieldDefn("prompt", ogr.OFTString))
    for i, wkt in enumerate(polys):
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        f.SetField("prompt", (prompts or [""] * len(polys))[i])
        lyr.CreateFeature(f)
    ds = None


def test_aoi_file_without_features_is_an_error(tmp_path, tiny_model_dir):
    _gpkg(tmp_path / "empty.gpkg", [])
    s = spec.load(job(tmp_path, md=tiny_model_dir, aois={"file": "empty.gpkg"}))
    with pytest.raises(JobSpecError, match="no features"):
        runner.run(s, workers=0, progress=False)
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


def test_aoi_polygons_pick_tiles_and_prompts(tmp_path, tiny_model_dir):
    # an L of two small squares: only the tiles they touch, each with its feature's prompt
    _gpkg(tmp_path / "aoi.gpkg", ["POLYGON((453130 6233500,453150 6233500,453150 6233520,453130 6233520,453130 6233500))",
                                  "POLYGON((453400 6233800,453420 6233800,453420 6233820,453400 6233820,453400 6233800))"],
          ["a marsh", "a quarry"])
    s = spec.load(job(tmp_path, md=tiny_model_dir, aois={"file": "aoi.gpkg", "prompt_attribute": "prompt"}))
    tiles = runner.plan_tiles(s, 48)
    # each tile covers only its AOI's bounding box (the squares lie on the 4 m pixel grid)
    assert [(t.prompt, t.extent(48, 4.0)) for t in tiles] == [
        ("a quarry", (453400.0, 6233800.0, 453420.0, 6233820.0)),
        ("a marsh", (453128.0, 6233500.0, 453152.0, 6233520.0))]
    whole = spec.load(job(tmp_path, "whole.yaml", md=tiny_model_dir, clip_tiles=False,
                          aois={"file": "aoi.gpkg", "prompt_attribute": "prompt"}))
    assert [t.extent(48, 4.0) for t in runner.plan_tiles(whole, 48)] == [
        (453312.0, 6233664.0, 453504.0, 6233856.0), (453120.0, 6233472.0, 453312.0, 6233664.0)]
    with pytest.raises(JobSpecError, match="aois.prompt_attribute: .* no field 'caption'"):
        runner.plan_tiles(spec.load(job(tmp_path, md=tiny_model_dir, aois={"file": "aoi.gpkg",
                                                                            "prompt_attribute": "caption"})), 48)


def test_gsd_far_outside_training_range_warns(tmp_path, tiny_model_dir):
    from rsgen_qgis.core.runtime.models import find

    s = spec.load(job(tmp_path, md=tiny_model_dir, gsd=200.0))
    pkg = find("rsgen-tiny", [tiny_model_dir])
    w = runner.gsd_warning(s, pkg.manifest, 48, runner.plan_tiles(s, 48)[0])
    assert "far outside the model's training range 1-20 m" in w and "200 m" in w
    ok = spec.load(job(tmp_path, "ok.yaml", md=tiny_model_dir))
    assert runner.gsd_warning(ok, pkg.manifest, 48, runner.plan_tiles(ok, 48)[0]) is None


def test_tiles_vrt_manifest_and_seamless_mosaic(clean_run, tmp_path, tiny_model_dir):
    s, man = clean_run
    assert man["tiles_planned"] == 4 and sorted(man["tiles"]) == ["r-32467_c2360", "r-32467_c2361",
                                                                  "r-32468_c2360", "r-32468_c2361"]
    assert man["metadata_policy"] is not None and man["model"]["id"] == "rsgen-tiny"
    on_disk = json.load(open(os.path.join(s.output, "manifest.json")))
    assert on_disk["tiles"] == man["tiles"]
    with rasterio.open(os.path.join(s.output, "mosaic.vrt")) as ds:
        mosaic = ds.read()
        # the box snapped outward to the 4 m grid, not the 2 x 2 tiles' 96 x 96 px
        assert (ds.width, ds.height) == (93, 63) and ds.transform.c == 453128.0 and ds.transform.f == 6233852.0
    # the (clipped) tiles join exactly as one large-area request over the box does
    one = generate(GenerationRequest(extent=(453128.0, 6233600.0, 453500.0, 6233852.0), crs="EPSG:32734", gsd=4.0,
                                     prompt="farmland", seed=5, steps=2, guidance=1.0, model="rsgen-tiny",
                                     large_area=True, block_windows=2, output=str(tmp_path / "one.tif")),
                   model_dirs=[tiny_model_dir])
    with rasterio.open(one.path) as ds:
        assert np.array_equal(ds.read(), mosaic)
    assert mosaic.std() > 5


def test_full_disk_never_claimed(tmp_path, tiny_model_dir, monkeypatch):
    import rasterio.shutil as rshutil

    real_copy = rshutil.copy
    calls = {"n": 0}

    def copy(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_copy(*a, **k)

    monkeypatch.setattr(rshutil, "copy", copy)
    s = spec.load(job(tmp_path, md=tiny_model_dir))
    with pytest.raises(runner.BatchError, match="No space left"):
        runner.run(s, workers=0, progress=False)
    man = json.load(open(os.path.join(s.output, "manifest.json")))
    files = sorted(os.listdir(os.path.join(s.output, "tiles")))
    assert len(man["tiles"]) == 3 and len(files) == 3  # the failed tile: no file, no record
    assert sorted(v["path"] for v in man["tiles"].values()) == [os.path.join("tiles", f) for f in files]
    assert not [f for f in os.listdir(s.output) if "partial" in f]
    monkeypatch.setattr(rshutil, "copy", real_copy)
    man = runner.run(s, workers=0, progress=False)  # resume does the missing one
    assert len(man["tiles"]) == 4


def test_resume_after_kill_9(clean_run, tmp_path, tiny_model_dir):
    s0, _ = clean_run
    path = job(tmp_path, md=tiny_model_dir)
    mpath = tmp_path / "out" / "manifest.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    # the child's output goes to a file, not a pipe nobody reads until the end: a chatty import (Debian sid's
    # onnxruntime prints pages of ONNX schema warnings) would fill the pipe and block the child forever
    log = open(tmp_path / "child.log", "w+b")
    p = subprocess.Popen([sys.executable, "-m", "rsgen_qgis", "batch", path, "--workers", "0", "--quiet"],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
    n = 0
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        try:
            n = len(json.load(open(mpath))["tiles"])
        except (OSError, ValueError, KeyError):
            n = 0
        if n >= 1:
            break
        time.sleep(0.02)
    assert p.poll() is None, (log.seek(0), log.read()[-4000:])
    p.send_signal(signal.SIGKILL)
    p.wait()
    log.close()
    before = json.load(open(mpath))["tiles"]
    assert 1 <= len(before) < 4
    stamps = {k: os.stat(tmp_path / "out" / v["path"]).st_mtime_ns for k, v in before.items()}
    man = runner.run(spec.load(path), workers=0, progress=False)
    assert sorted(man["tiles"]) == sorted(json.load(open(os.path.join(s0.output, "manifest.json")))["tiles"])
    # done-before-kill tiles were not redone; every tile's bytes equal the uninterrupted run's
    assert {k: os.stat(tmp_path / "out" / before[k]["path"]).st_mtime_ns for k in before} == stamps
    assert tile_bytes(str(tmp_path / "out")) == tile_bytes(s0.output)
    assert not [f for f in os.listdir(tmp_path / "out" / "tiles") if "partial" in f]


@pytest.mark.slow
def test_dask_local_cluster_two_workers(clean_run, tmp_path, tiny_model_dir):
    s0, _ = clean_run
    s = spec.load(job(tmp_path, md=tiny_model_dir))
    man = runner.run(s, workers=2, progress=False)
    assert len(man["tiles"]) == 4
    assert tile_bytes(s.output) == tile_bytes(s0.output)
    sessions = {}
    for rec in man["tiles"].values():
        sessions.setdefault(rec["worker_pid"], set()).add(rec["session_id"])
    assert os.getpid() not in sessions and 1 <= len(sessions) <= 2
    assert all(len(v) == 1 for v in sessions.values())  # one warm session per worker process


def test_vector_layout_burned_per_block_grid(tmp_path):
    from osgeo import ogr, osr

    from rsgen_qgis.batch.layout import VectorLayout
    from rsgen_qgis.core.geo.georef import Grid

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)  # the roads come in lon/lat, the grid is UTM 34S
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "roads.gpkg"))
    lyr = ds.CreateLayer("roads", srs, ogr.wkbLineString)
    f = ogr.Feature(lyr.GetLayerDefn())
    # a north-south line at x = 453200 in UTM 34S
    ct = osr.CoordinateTransformation(_utm(), srs)
    line = ogr.CreateGeometryFromWkt("LINESTRING(453200 6233000,453200 6234500)")
    line.Transform(ct)
    f.SetGeometry(line)
    lyr.CreateFeature(f)
    ds = None
    s = spec.parse({"output": "o", "crs": "EPSG:32734", "gsd": 4.0, "aois": {"bboxes": [{"bbox": BOX}]},
                    "layout": [{"file": "roads.gpkg", "class": "road", "buffer": 5}]}, str(tmp_path / "job.yaml"))
    vl = VectorLayout.from_dict(VectorLayout.from_spec(s).to_dict())
    grid = Grid(_utm().ExportToWkt(), (453100.0, 4.0, 0.0, 6233900.0, 0.0, -4.0), 50, 40)
    ids = vl(grid)
    assert ids.shape == (40, 50) and ids.dtype == np.uint8
    cols = np.where((ids == 1).all(axis=0))[0]  # road (class 1), 10 m wide: the 2 pixel centres within 5 m
    assert list(cols) == [24, 25]
    assert set(np.unique(ids)) == {0, 1}


def _utm():
    from osgeo import osr

    s = osr.SpatialReference()
    s.ImportFromEPSG(32734)
    s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return s


@pytest.mark.slow
def test_dask_existing_scheduler_address(clean_run, tmp_path, tiny_model_dir):
    """`--scheduler tcp://host:port`: a cluster started elsewhere (here a 2-worker LocalCluster on loopback)."""
    from distributed import LocalCluster

    s0, _ = clean_run
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        addr = cluster.scheduler_address
        assert addr.startswith("tcp://127.0.0.1:")
        s = spec.load(job(tmp_path, md=tiny_model_dir))
        man = runner.run(s, scheduler=addr, progress=False)
        assert len(cluster.scheduler.workers) == 2  # the cluster outlives the run: the runner only disconnects
    assert len(man["tiles"]) == 4
    assert tile_bytes(s.output) == tile_bytes(s0.output)


def test_tile_renamed_but_not_recorded_is_adopted_not_redone(clean_run, tmp_path, tiny_model_dir):
    """Killed between a tile's rename and the manifest write: the whole file is there; it is taken, not redone."""
    import shutil

    s0, _ = clean_run
    path = job(tmp_path, md=tiny_model_dir)
    s = spec.load(path)
    shutil.copytree(s0.output, s.output)
    mpath = os.path.join(s.output, "manifest.json")
    man = json.load(open(mpath))
    from rsgen_qgis.core.runtime.models import find

    # the copy is this job's folder now (the identity of the job as run: the model's defaults filled in)
    man["job_identity"] = runner._job_identity(runner.with_model_defaults(s, find(s.model, s.model_dirs).manifest))
    key = sorted(man["tiles"])[1]
    rec = man["tiles"].pop(key)
    json.dump(man, open(mpath, "w"))
    stamp = os.stat(os.path.join(s.output, rec["path"])).st_mtime_ns
    other = sorted(man["tiles"])[0]  # and one whose file is not what its tags claim: regenerated
    with rasterio.open(os.path.join(s.output, man["tiles"][other]["path"]), "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        ds.update_tags(request="{}")
    out = runner.run(s, workers=0, progress=False)
    assert sorted(out["tiles"]) == sorted(list(man["tiles"]) + [key])
    assert out["tiles"][key]["adopted"] is True and out["tiles"][key]["sha256"] == rec["sha256"]
    assert os.stat(os.path.join(s.output, rec["path"])).st_mtime_ns == stamp
    assert "adopted" not in out["tiles"][other]
    assert tile_bytes(s.output) == tile_bytes(s0.output)


def test_batch_and_large_area_modules_import_no_torch_or_qgis():
    code = ("import sys\n"
            "import rsgen_qgis.batch.runner, rsgen_qgis.batch.cli, rsgen_qgis.batch.layout\n"
            "import rsgen_qgis.core.engine.blocks, rsgen_qgis.core.engine.cascade, rsgen_qgis.core.engine.seams, distributed\n"
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'qgis') if m in sys.modules]\n"
            "assert not bad, bad\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr


def test_guidance_outside_a_distilled_models_range(tmp_path):
    """A guidance-distilled model takes scales 1-5 only: the job stops before any tile with the key and range."""
    from rsgen_qgis.training.export import build_tiny_package

    md = tmp_path / "models"
    build_tiny_package(str(md / "rsgen-tiny"), guidance_input=True)
    s = spec.load(job(tmp_path, md=str(md), guidance=7.5))
    with pytest.raises(JobSpecError, match=r"guidance: 7.5 is outside 1-5"):
        runner.run(s, workers=0, progress=False)
    assert not os.path.exists(tmp_path / "out")


def test_stale_write_probes_of_a_killed_run_are_removed(tmp_path):
    """check_writable's probe file survives a kill -9 that lands between its create and remove; the next run's
    start removes it with the half-written tiles (seen once as an extra file after the kill -9 test)."""
    from rsgen_qgis.core.geo.geotiff import PROBE_PREFIX

    (tmp_path / "tiles").mkdir()
    stale = [tmp_path / "tiles" / f"{PROBE_PREFIX}abc", tmp_path / f"{PROBE_PREFIX}def",
             tmp_path / "tiles" / ".r0_c0.tif.partial-xyz"]
    for p in stale:
        p.write_bytes(b"")
    keep = tmp_path / "tiles" / "r0_c0.tif"
    keep.write_bytes(b"tile")
    assert runner._remove_stale_partials(str(tmp_path)) == 3
    assert not any(p.exists() for p in stale) and keep.exists()


# -- issue 20, 7: one runner per job folder; a finished, unrecorded tile of a class-guided model is adopted ------
def _start_runner(path, tmp_path, name):
    log = open(tmp_path / f"{name}.log", "w+b")
    p = subprocess.Popen([sys.executable, "-m", "rsgen_qgis", "batch", path, "--workers", "0", "--quiet"],
                         env=dict(os.environ, PYTHONPATH=ROOT), stdout=log, stderr=subprocess.STDOUT)
    return p, log


def test_a_second_runner_refuses_while_the_first_holds_the_lock(clean_run, tmp_path, tiny_model_dir):
    from rsgen_qgis.batch.lock import LOCK_FILE, JobFolderLocked

    s0, _ = clean_run
    path = job(tmp_path, md=tiny_model_dir)
    first, log = _start_runner(path, tmp_path, "first")
    lock = tmp_path / "out" / LOCK_FILE
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and f'"pid": {first.pid}' not in \
            (lock.read_text() if lock.exists() else ""):
        time.sleep(0.02)
    assert first.poll() is None, (log.seek(0), log.read()[-4000:])
    with pytest.raises(JobFolderLocked) as held:
        runner.run(spec.load(path), workers=0, progress=False)
    text = str(held.value)
    assert f"process {first.pid}" in text and socket.gethostname() in text and "since" in text
    # the CLI says the same, exit 2, no traceback
    second = subprocess.run([sys.executable, "-m", "rsgen_qgis", "batch", path, "--workers", "0", "--quiet"],
                            env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    if first.poll() is None:
        assert second.returncode == 2 and f"process {first.pid}" in second.stderr, second.stderr
    assert first.wait(300) == 0, (log.seek(0), log.read()[-4000:])
    log.close()
    man = json.load(open(tmp_path / "out" / "manifest.json"))
    assert len(man["tiles"]) == 4 and all(runner._tile_ok(str(tmp_path / "out"), r) for r in man["tiles"].values())
    assert tile_bytes(str(tmp_path / "out")) == tile_bytes(s0.output)
    assert not lock.exists()  # released at the end


def test_a_stale_lock_of_a_dead_process_is_taken_over(clean_run, tmp_path, tiny_model_dir):
    from rsgen_qgis.batch.lock import LOCK_FILE

    path = job(tmp_path, md=tiny_model_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                          "started": "2020-01-01T00:00:00"}))
    man = runner.run(spec.load(path), workers=0, progress=False)
    assert len(man["tiles"]) == 4


def test_a_lock_held_on_another_host_is_respected(tmp_path, tiny_model_dir):
    from rsgen_qgis.batch.lock import LOCK_FILE, JobFolderLocked

    path = job(tmp_path, md=tiny_model_dir)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "render-node-7",
                                                          "started": "2020-01-01T00:00:00"}))
    with pytest.raises(JobFolderLocked, match="render-node-7"):
        runner.run(spec.load(path), workers=0, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.fixture(scope="module")
def guided_dir(tiny_model_dir, tmp_path_factory):
    """The tiny package with a toy class guide (tests/test_classguide.py's), its default scale 20 as rsgen-base's."""
    import shutil

    pytest.importorskip("torch")
    from rsgen_qgis.training.classguide import add_to_package, export
    from test_classguide import CLASSES, PHRASES, _random_guide

    root = tmp_path_factory.mktemp("guided_batch")
    dst = root / "rsgen-tiny"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), dst)
    export(_random_guide(), str(root / "g.onnx"))
    add_to_package(str(dst), str(root / "g.onnx"), CLASSES, PHRASES, default_scale=20.0, min_similarity=-1.0)
    return str(root)


def test_an_unrecorded_tile_of_a_class_guided_model_is_adopted(tmp_path, guided_dir):
    """The tile's tags record class_guidance 20 (the model's default, resolved); the task leaves it to the model
    (None): recovery compares the resolved request, so the finished tile is taken, not redone."""
    import shutil

    s = spec.load(job(tmp_path, md=guided_dir, name="a.yaml", out="a"))
    first = runner.run(s, workers=0, progress=False)
    with rasterio.open(os.path.join(s.output, next(iter(first["tiles"].values()))["path"])) as ds:
        assert json.loads(ds.tags()["request"])["class_guidance"] == 20.0
    mpath = os.path.join(s.output, "manifest.json")
    man = json.load(open(mpath))
    key = sorted(man["tiles"])[0]
    rec = man["tiles"].pop(key)
    json.dump(man, open(mpath, "w"))
    stamp = os.stat(os.path.join(s.output, rec["path"])).st_mtime_ns
    out = runner.run(s, workers=0, progress=False)
    assert out["tiles"][key].get("adopted") is True and out["tiles"][key]["sha256"] == rec["sha256"]
    assert os.stat(os.path.join(s.output, rec["path"])).st_mtime_ns == stamp
    shutil.rmtree(s.output)


def test_block_windows_absent_or_null_is_the_models_default(tmp_path):
    base = {"output": "out", "crs": "EPSG:32734", "gsd": 4.0, "aois": {"bboxes": [{"bbox": BOX}]}}
    assert spec.parse(base, str(tmp_path / "job.yaml")).block_windows is None
    assert spec.parse({**base, "block_windows": None}, str(tmp_path / "job.yaml")).block_windows is None
    assert spec.parse({**base, "block_windows": 3}, str(tmp_path / "job.yaml")).block_windows == 3


def test_a_job_is_not_resumed_with_another_version_of_its_model(tmp_path, tiny_model_dir):
    """The package changed between two runs of the same job (here a prompt bank added, the denoiser the same):
    resuming would mix tiles of two versions, so it is refused with a message, and the tiles made stay."""
    import shutil

    from rsgen_qgis.core.errors import OutputError
    from rsgen_qgis.training.prompt_bank import attach

    models = tmp_path / "m"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), models / "rsgen-tiny")
    s = spec.load(job(tmp_path, md=str(models), name="v.yaml", out="v"))
    first = runner.run(s, workers=0, progress=False)
    assert first["model"]["package_sha256"] and len(first["tiles"]) >= 1
    before = tile_bytes(s.output)
    again = runner.run(s, workers=0, progress=False)  # the same package: resumed, nothing redone
    assert again["tiles"] == first["tiles"]
    attach(str(models / "rsgen-tiny"))
    with pytest.raises(OutputError, match="was started with another version of model 'rsgen-tiny'"):
        runner.run(s, workers=0, progress=False)
    assert tile_bytes(s.output) == before

