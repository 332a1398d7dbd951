"""Every door runs a latent package end to end: the CLI, the batch runner, Processing, the real qgis_process and
the dock (the tiny random latent denoiser on the committed TAEF2 graphs, conftest's tiny_latent_dir)."""
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import rasterio
import yaml

from rsgen_qgis import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "rsgen-tiny-latent"
EXTENT = "453000,6233600,453384,6233920"  # 96 x 80 px at 4 m (xmin,ymin,xmax,ymax)
PEXTENT = "453000,453384,6233600,6233920 [EPSG:32734]"  # Processing's order: xmin,xmax,ymin,ymax


def check(path, w=96, h=80):
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32734 and (ds.width, ds.height, ds.count) == (w, h, 3)
        assert ds.tags()["model_id"] == MODEL and ds.tags()["autoencoder"].startswith("taef2")
        assert ds.read().std() > 0


def test_cli(tiny_latent_dir, tmp_path):
    """In a fresh process, as a user runs it; torch is never imported on the run-time path."""
    out = tmp_path / "cli.tif"
    code = ("import sys\nfrom rsgen_qgis.cli import main\n"
            f"rc = main(['generate', '--extent', '{EXTENT}', '--crs', 'EPSG:32734', '--gsd', '4', '--prompt', "
            f"'houses', '--steps', '2', '--model', '{MODEL}', '--model-dir', {tiny_latent_dir!r}, '--quiet', "
            f"'--out', {str(out)!r}])\n"
            "assert rc == 0, rc\n"
            "bad = [m for m in ('torch', 'diffusers', 'qgis') if m in sys.modules]\nassert not bad, bad\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr[-3000:]
    check(out)


def test_batch_runner(tiny_latent_dir, tmp_path):
    from rsgen_qgis.batch import runner, spec

    job = {"output": str(tmp_path / "out"), "crs": "EPSG:32734", "gsd": 4.0, "model": MODEL,
           "model_dirs": [tiny_latent_dir], "seed": 5, "steps": 2, "guidance": 1.0, "prompt": "houses",
           "tile_px": 64, "block_windows": 2, "aois": {"bboxes": [{"bbox": [453130.0, 6233600.0, 453300.0, 6233750.0]}]}}
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(job))
    man = runner.run(spec.load(str(p)), workers=0, progress=False)
    tiles = sorted(man["tiles"])
    assert tiles and man["block_layout"]["tile"] == 8  # latent cells of the model's 64 px tile
    for t in tiles:
        path = os.path.join(job["output"], man["tiles"][t]["path"])
        with rasterio.open(path) as ds:
            assert ds.tags()["autoencoder"].startswith("taef2") and ds.read().std() > 0


def test_processing(qgis_processing, tiny_latent_dir, tmp_path, monkeypatch):
    import processing
    from qgis.core import QgsApplication, QgsSettings

    from rsgen_qgis.processing.provider import RsgenProvider

    monkeypatch.delenv(settings.ENV_MODEL_DIRS, raising=False)
    QgsSettings().remove("rsgen_qgis")
    registry = QgsApplication.processingRegistry()
    prov = RsgenProvider()
    assert registry.addProvider(prov)
    try:
        settings.set_model_dirs([tiny_latent_dir])
        out = str(tmp_path / "proc.tif")
        res = processing.run("rsgen:generate", {"EXTENT": PEXTENT, "GSD": 4.0, "PROMPT": "houses",
                                                "MODEL": MODEL, "SEED": 1, "STEPS": 2, "OUTPUT": out})
        check(res["OUTPUT"])
    finally:
        registry.removeProvider(prov)
        QgsSettings().remove("rsgen_qgis")


@pytest.mark.slow
def test_qgis_process(tiny_latent_dir, tmp_path):
    exe = "/usr/bin/qgis_process.bin"
    assert os.access(exe, os.X_OK), f"{exe} is not installed"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=ROOT,
               QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"), PYTHONPATH=sysconfig.get_paths()["purelib"],
               PYTHONDONTWRITEBYTECODE="1")
    env[settings.ENV_MODEL_DIRS] = tiny_latent_dir
    run = lambda *a: subprocess.run([exe, *a], env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
    p = run("plugins", "enable", "rsgen_qgis")
    assert p.returncode == 0, p.stdout + p.stderr
    out = tmp_path / "qp.tif"
    p = run("run", "rsgen:generate", "--", f"EXTENT={PEXTENT}", "GSD=4", "PROMPT=houses",
            f"MODEL={MODEL}", "STEPS=2", f"OUTPUT={out}")
    assert p.returncode == 0, p.stdout + p.stderr
    check(out)


def test_dock(qgis_iface, qgis_new_project, qtbot, tiny_latent_dir, tmp_path, monkeypatch):
    from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle, QgsSettings

    from rsgen_qgis.gui.dock import GenerationDock

    QgsSettings().remove("rsgen_qgis")
    monkeypatch.setenv(settings.ENV_MODEL_DIRS, tiny_latent_dir)
    c = qgis_iface.mapCanvas()
    c.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:32734"))
    c.setExtent(QgsRectangle(453000.0, 6233600.0, 453384.0, 6233920.0))
    dock = GenerationDock(qgis_iface)
    try:
        i = dock.model_combo.findData(MODEL)
        assert i >= 0, dock.model_hint.text()
        assert dock.model_combo.findData("taef2") < 0  # an autoencoder is a part, not a model to choose
        dock.model_combo.setCurrentIndex(i)
        dock.prompt_edit.setPlainText("houses")
        dock.steps_spin.setValue(2)
        dock.gsd_spin.setValue(4.0)
        dock.output_widget.setFilePath(str(tmp_path / "dock.tif"))
        dock.update_size()
        task = dock.generate()
        assert task is not None
        qtbot.waitUntil(lambda: task.done, timeout=120_000)
        assert task.error is None, task.error
        with rasterio.open(str(tmp_path / "dock.tif")) as ds:
            assert ds.tags()["autoencoder"].startswith("taef2") and np.asarray(ds.read()).std() > 0
    finally:
        dock.cleanup()
        dock.deleteLater()
        QgsSettings().remove("rsgen_qgis")
