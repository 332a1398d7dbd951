"""Screenshot of the real QGIS window showing given layers (README figures of results on real data).

    .venv/bin/python tools/screenshot_map.py SPEC.json OUT.png|OUT.jpg [--size 1400x900]

SPEC: {"crs": "EPSG:32734", "extent": [xmin, ymin, xmax, ymax], "layers": [{"path": ..., "name": ...,
       "line": "#rrggbb" | "outline": "#rrggbb", "width": mm}, ...]}: the first layer is drawn at the bottom.
Rasters keep QGIS's default rendering; vectors get a plain line or an outline-only fill. Runs /usr/bin/qgis.bin under
Xvfb with a throw-away profile and this file as its startup code, like tools/screenshot_dock.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

THIS = os.path.abspath(globals().get("__file__") or os.environ.get("RSGEN_MAP_SCRIPT", "screenshot_map.py"))
ROOT = os.path.dirname(os.path.dirname(THIS))
ENV_SPEC, ENV_OUT = "RSGEN_MAP_SPEC", "RSGEN_MAP_OUT"


def launch(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec")
    ap.add_argument("out")
    ap.add_argument("--size", default="1400x900")
    ap.add_argument("--timeout", type=int, default=180)
    a = ap.parse_args(argv)
    out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    for stale in (out, out + ".error.txt"):
        if os.path.exists(stale):
            os.remove(stale)
    profile = tempfile.mkdtemp(prefix="rsgen-map-")
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", PYTHONDONTWRITEBYTECODE="1", RSGEN_MAP_SCRIPT=THIS,
               **{ENV_SPEC: os.path.abspath(a.spec), ENV_OUT: out})
    cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {a.size}x24", "/usr/bin/qgis.bin", "--nologo", "--noversioncheck",
           "--noplugins", "--profiles-path", profile, "--code", THIS]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        print("QGIS did not finish in time", file=sys.stderr)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if os.path.isfile(out + ".error.txt"):
        with open(out + ".error.txt", encoding="utf-8") as f:
            print(f.read(), file=sys.stderr)
    if not os.path.isfile(out):
        print(f"no screenshot written to {out}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({os.path.getsize(out) // 1024} KB)")
    return 0


def _style(layer, spec) -> None:
    from qgis.core import QgsFillSymbol, QgsLineSymbol

    if spec.get("line"):
        layer.renderer().setSymbol(QgsLineSymbol.createSimple(
            {"color": spec["line"], "width": str(spec.get("width", 0.5)), "width_unit": "MM"}))
    elif spec.get("outline"):
        layer.renderer().setSymbol(QgsFillSymbol.createSimple(
            {"style": "no", "outline_color": spec["outline"], "outline_width": str(spec.get("width", 0.5)),
             "outline_width_unit": "MM"}))


def inside_qgis() -> None:
    import qgis.utils
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer, QgsRectangle, QgsVectorLayer
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication

    with open(os.environ[ENV_SPEC], encoding="utf-8") as f:
        spec = json.load(f)
    out = os.environ[ENV_OUT]
    iface = qgis.utils.iface
    project = QgsProject.instance()
    crs = QgsCoordinateReferenceSystem(spec["crs"])
    project.setCrs(crs)
    root = project.layerTreeRoot()
    for item in spec["layers"]:
        path = item["path"]
        if path.lower().endswith((".tif", ".tiff")):
            layer = QgsRasterLayer(path, item.get("name", os.path.basename(path)), "gdal")
        else:
            layer = QgsVectorLayer(path, item.get("name", os.path.basename(path)), "ogr")
            _style(layer, item)
        if not layer.isValid():
            raise RuntimeError(f"cannot open {path}")
        project.addMapLayer(layer, False)
        root.insertLayer(0, layer)  # later layers on top
    window = iface.mainWindow()
    from qgis.PyQt.QtWidgets import QDockWidget

    for dock in window.findChildren(QDockWidget):  # the Layers panel (legend) stays; the Browser goes
        if dock.objectName() == "Browser":
            dock.hide()
    window.setGeometry(QApplication.primaryScreen().availableGeometry())
    window.showMaximized()
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(crs)

    def zoom() -> None:
        canvas.setExtent(QgsRectangle(*spec["extent"]))
        canvas.refresh()

    def shoot() -> None:
        QApplication.processEvents()
        fmt = "JPG" if out.lower().endswith((".jpg", ".jpeg")) else "PNG"
        window.grab().save(out, fmt, 75 if fmt == "JPG" else -1)
        project.setDirty(False)
        os._exit(0)

    QTimer.singleShot(1500, zoom)
    QTimer.singleShot(6000, shoot)


def _inside_qgis_safely() -> None:
    try:
        inside_qgis()
    except Exception:  # noqa: BLE001
        import traceback

        from qgis.PyQt.QtWidgets import QApplication

        with open(os.environ[ENV_OUT] + ".error.txt", "w", encoding="utf-8") as f:
            f.write(traceback.format_exc())
        QApplication.instance().quit()


if os.environ.get(ENV_SPEC) and "qgis.utils" in sys.modules and getattr(sys.modules["qgis.utils"], "iface", None):
    _inside_qgis_safely()
elif __name__ == "__main__":
    sys.exit(launch())
