"""Screenshot of the real QGIS window with the "Satellite image generation" dock open (README, layout checks).

    .venv/bin/python tools/screenshot_dock.py out/dock.png [--model-dir DIR] [--size 1400x900] [--dock-only]
                                              [--generate [--model ID] [--steps N] [--gsd M]] [--conditions]
                                              [--recall] [--models-menu] [--data DIR [--extent X0,Y0,X1,Y1]]
                                              [--drawn X0,Y0,X1,Y1] [--inpaint | --superres] [--large] [--cancel-after S]

Starts /usr/bin/qgis.bin under Xvfb with a throw-away profile and this file as its startup code (--code).
Inside QGIS it draws an OSM-like map (land use, river, roads, buildings as memory layers) over Swellendam in
UTM 34S, loads the plugin from this checkout, opens the dock, fills in a prompt and saves the window; with
--generate it first presses Generate and waits for the layer, so the picture shows a result too; with --conditions
the Conditions section is open: layout from the ticked roads and buildings layers, the rules table; with --recall
(implies --generate) the dock is changed after the run, the generated layer's context menu in the Layers panel is
opened and saved as OUT's name + "_menu.png" (the whole screen: the menu is its own window), then its "Reuse
Generation Settings" is triggered and the window saved as OUT; with --models-menu the model "…" menu (add a
folder, install a zip) is opened and the screen saved as OUT's name + "_menu.png".
--data DIR loads the real Swellendam data instead (DIR/orthophoto.tif, DIR/training_data.gpkg's roads and
buildings, as /work/shared/tools/prepare-data writes them) in the CRS QGIS picks for the photo (EPSG:4326), zoomed
to --extent (map CRS; default the photo); --drawn draws a rectangle (map CRS) as the Area before generating;
--inpaint inpaints the photo inside the buildings (Conditions > From a raster layer); --superres super-resolves it
(Mode Super-resolve, with its Strength slider); --large ticks Large area;
--cancel-after S presses Cancel S seconds after Generate. With --generate the message bar's items are written to
OUT + ".bar.txt" (what the user sees on top, and under it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

# QGIS's --code runs this file through exec() without __file__; the launcher passes its path on instead.
THIS = os.path.abspath(globals().get("__file__") or os.environ.get("RSGEN_SCREENSHOT_SCRIPT", "screenshot_dock.py"))
ROOT = os.path.dirname(os.path.dirname(THIS))
ENV_OUT, ENV_DOCK_ONLY, ENV_GENERATE = "RSGEN_SCREENSHOT_OUT", "RSGEN_SCREENSHOT_DOCK_ONLY", "RSGEN_SCREENSHOT_GENERATE"
ENV_CONDITIONS, ENV_RECALL = "RSGEN_SCREENSHOT_CONDITIONS", "RSGEN_SCREENSHOT_RECALL"
ENV_MODELS_MENU = "RSGEN_SCREENSHOT_MODELS_MENU"
ENV_DATA, ENV_DRAWN, ENV_EXTRA = "RSGEN_SCREENSHOT_DATA", "RSGEN_SCREENSHOT_DRAWN", "RSGEN_SCREENSHOT_EXTRA"
ENV_PROMPT, ENV_OUTPUT = "RSGEN_SCREENSHOT_PROMPT", "RSGEN_SCREENSHOT_OUTPUT"
EXTENT = (453000.0, 6233600.0, 454600.0, 6235200.0)  # Swellendam, EPSG:32734


def launch(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--model-dir", action="append", default=[], help="folder with model packages to offer")
    ap.add_argument("--size", default="1400x900", help="screen size WxH")
    ap.add_argument("--dock-only", action="store_true", help="save only the dock, not the whole window")
    ap.add_argument("--generate", action="store_true", help="press Generate and wait for the layer first")
    ap.add_argument("--model", default="", help="model id to select (default: the dock's choice)")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps for --generate (default: the dock's)")
    ap.add_argument("--gsd", type=float, default=0.0, help="pixel size in metres (default: the dock's)")
    ap.add_argument("--conditions", action="store_true", help="open the Conditions section (layout from layers)")
    ap.add_argument("--recall", action="store_true", help="after --generate: the layer's context menu, then "
                    "Reuse Generation Settings")
    ap.add_argument("--models-menu", action="store_true", help="open the model '…' menu and save the screen too")
    ap.add_argument("--data", default="", help="folder with orthophoto.tif and training_data.gpkg (real data)")
    ap.add_argument("--extent", default="", help="with --data: X0,Y0,X1,Y1 to zoom to (map CRS)")
    ap.add_argument("--drawn", default="", help="X0,Y0,X1,Y1 (map CRS): a drawn rectangle as the Area")
    raster = ap.add_mutually_exclusive_group()
    raster.add_argument("--inpaint", action="store_true", help="with --data: inpaint the photo inside the buildings")
    raster.add_argument("--superres", action="store_true", help="with --data: super-resolve the photo (Conditions > "
                    "From a raster layer, Mode Super-resolve, its Strength slider shown)")
    ap.add_argument("--large", action="store_true", help="tick Large area")
    ap.add_argument("--output", default="", help="the Output file (default: a temporary file)")
    ap.add_argument("--prompt", default="", help="the prompt (default: medium density residential by a river)")
    ap.add_argument("--cancel-after", type=float, default=0.0, help="press Cancel this many seconds after Generate")
    ap.add_argument("--timeout", type=int, default=600)
    a = ap.parse_args(argv)
    a.generate = a.generate or a.recall
    out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    for stale in (out, out + ".error.txt"):
        if os.path.exists(stale):
            os.remove(stale)
    profile = tempfile.mkdtemp(prefix="rsgen-shot-")
    env = dict(os.environ, QGIS_PLUGINPATH=ROOT, QT_QPA_PLATFORM="xcb", PYTHONDONTWRITEBYTECODE="1",
               **{ENV_OUT: out, ENV_DOCK_ONLY: "1" if a.dock_only else "", "RSGEN_SCREENSHOT_SCRIPT": THIS,
                  ENV_GENERATE: f"{a.model}|{a.steps}|{a.gsd}" if a.generate else "",
                  ENV_CONDITIONS: "1" if a.conditions else "", ENV_RECALL: "1" if a.recall else "",
                  ENV_MODELS_MENU: "1" if a.models_menu else "", ENV_DATA: os.path.abspath(a.data) if a.data else "",
                  ENV_DRAWN: a.drawn, ENV_PROMPT: a.prompt,
                  ENV_OUTPUT: os.path.abspath(a.output) if a.output else "", ENV_EXTRA: f"{a.extent}|{'superres' if a.superres else 'inpaint' if a.inpaint else ''}|{int(a.large)}|{a.cancel_after}"})
    venv_site = os.path.join(ROOT, ".venv", "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                             "site-packages")
    if os.path.isdir(venv_site):  # QGIS runs /usr/bin/python3: lend it the venv's onnxruntime
        env["PYTHONPATH"] = os.pathsep.join(p for p in (venv_site, env.get("PYTHONPATH", "")) if p)
    if a.model_dir:
        env["RSGEN_MODEL_DIRS"] = os.pathsep.join(os.path.abspath(d) for d in a.model_dir)
    cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {a.size}x24", "/usr/bin/qgis.bin", "--nologo", "--noversioncheck",
           "--noplugins", "--profiles-path", profile, "--code", THIS]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # own process group: a hung QGIS and its Xvfb die together
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
    print(f"wrote {out}")
    return 0


# -- runs inside QGIS (--code) ---------------------------------------------------------------------------------
def _memory_layer(kind: str, name: str, geoms, color: str, width: float = 0.0):
    from qgis.core import QgsFeature, QgsGeometry, QgsSymbol, QgsVectorLayer

    layer = QgsVectorLayer(f"{kind}?crs=EPSG:32734", name, "memory")
    feats = []
    for wkt in geoms:
        f = QgsFeature()
        f.setGeometry(QgsGeometry.fromWkt(wkt))
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    layer.updateExtents()
    symbol = QgsSymbol.defaultSymbol(layer.geometryType())
    symbol.setColor(_qcolor(color))
    if width:
        symbol.setWidth(width)
    elif kind == "Polygon":
        symbol.symbolLayer(0).setStrokeColor(_qcolor(color).darker(115))
    layer.renderer().setSymbol(symbol)
    return layer


def _qcolor(name: str):
    from qgis.PyQt.QtGui import QColor

    return QColor(name)


def _osm_like_layers():
    """Deterministic land use, a river, roads and buildings: enough to look like an OSM map at 1:10 000."""
    import random

    x0, y0, x1, y1 = EXTENT
    rnd = random.Random(7)
    rect = lambda a, b, c, d: f"POLYGON(({a} {b},{c} {b},{c} {d},{a} {d},{a} {b}))"  # noqa: E731
    land = [rect(x0 - 500, y0 - 500, x1 + 500, y1 + 500)]
    parks = [rect(453900, 6234500, 454300, 6234900), rect(453100, 6233700, 453500, 6234000)]
    river = ["POLYGON((452500 6234150,453200 6234250,453900 6234150,454400 6234300,455100 6234250,"
             "455100 6234330,454400 6234380,453900 6234230,453200 6234330,452500 6234230,452500 6234150))"]
    roads = ["LINESTRING(452500 6234800,453300 6234700,454000 6234850,455100 6234700)",
             "LINESTRING(453600 6233000,453650 6234000,453700 6234600,453750 6235800)",
             "LINESTRING(452800 6235300,453400 6235000,453650 6234900)"]
    buildings = []
    for _ in range(220):
        bx, by = rnd.uniform(x0, x1), rnd.uniform(6234450, y1)
        if 453850 < bx < 454350 and 6234450 < by < 6234950:
            continue  # the park
        w, h = rnd.uniform(8, 18), rnd.uniform(8, 16)
        buildings.append(rect(bx, by, bx + w, by + h))
    return [
        _memory_layer("Polygon", "landuse", land, "#f2efe9"),
        _memory_layer("Polygon", "parks", parks, "#c8facc"),
        _memory_layer("Polygon", "water", river, "#aad3df"),
        _memory_layer("LineString", "roads", roads, "#f7c46b", 1.6),
        _memory_layer("Polygon", "buildings", buildings, "#d9d0c9"),
    ]


def _real_layers(folder: str):
    """The Swellendam orthophoto, then its OSM roads and buildings (outlines, so the photo shows through)."""
    from qgis.core import QgsRasterLayer, QgsSymbol, QgsVectorLayer

    photo = QgsRasterLayer(os.path.join(folder, "orthophoto.tif"), "orthophoto")
    gpkg = os.path.join(folder, "training_data.gpkg")
    roads = QgsVectorLayer(f"{gpkg}|layername=roads", "roads", "ogr")
    buildings = QgsVectorLayer(f"{gpkg}|layername=buildings", "buildings", "ogr")
    symbol = QgsSymbol.defaultSymbol(buildings.geometryType())
    symbol.symbolLayer(0).setBrushStyle(0)  # Qt.NoBrush: outline only
    symbol.symbolLayer(0).setStrokeColor(_qcolor("#ff00ff"))
    buildings.renderer().setSymbol(symbol)
    line = QgsSymbol.defaultSymbol(roads.geometryType())
    line.setColor(_qcolor("#f7c46b"))
    roads.renderer().setSymbol(line)
    return [photo, roads, buildings]


def _rect(text: str):
    from qgis.core import QgsRectangle

    return QgsRectangle(*[float(v) for v in text.split(",")])


def inside_qgis() -> None:
    import qgis.utils
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRectangle
    from qgis.gui import QgsCollapsibleGroupBox
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication

    iface = qgis.utils.iface
    out = os.environ[ENV_OUT]
    project = QgsProject.instance()
    data = os.environ.get(ENV_DATA, "")
    extent_text, raster_mode, large, cancel_after = (os.environ.get(ENV_EXTRA) or "|0|0|0").split("|")
    inpaint, superres = raster_mode == "inpaint", raster_mode == "superres"
    layers = _real_layers(data) if data else _osm_like_layers()
    crs = layers[0].crs() if data else QgsCoordinateReferenceSystem("EPSG:32734")
    extent = (_rect(extent_text) if extent_text else layers[0].extent()) if data else QgsRectangle(*EXTENT)
    project.setCrs(crs)
    for layer in layers:
        project.addMapLayer(layer)
    window = iface.mainWindow()
    window.setGeometry(QApplication.primaryScreen().availableGeometry())
    window.showMaximized()
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(crs)
    qgis.utils.loadPlugin("rsgen_qgis")
    qgis.utils.startPlugin("rsgen_qgis")
    plugin = qgis.utils.plugins["rsgen_qgis"]
    plugin.show_dock()
    dock = plugin.dock
    dock.prompt_edit.setPlainText(os.environ.get(ENV_PROMPT) or
                                  "a satellite image of medium density residential area with trees by a river")
    dock.seed_spin.setValue(7)
    if os.environ.get(ENV_OUTPUT):
        dock.output_widget.setFilePath(os.environ[ENV_OUTPUT])
    if os.environ.get(ENV_CONDITIONS):
        dock.conditions.layout_group.setChecked(True)
        dock.conditions.tick(*[lyr for n in ("roads", "buildings") for lyr in project.mapLayersByName(n)])

    if int(large):
        dock.large_check.setChecked(True)
    if inpaint or superres:
        c = dock.conditions
        c.raster_group.setChecked(True)
        c.mode_combo.setCurrentIndex(c.mode_combo.findData("superres" if superres else "inpaint"))
        c.raster_combo.setLayer(project.mapLayersByName("orthophoto")[0])
        if not superres:
            c.mask_combo.setLayer(project.mapLayersByName("buildings")[0])
        group = dock.findChild(QgsCollapsibleGroupBox, "RsgenConditions")
        if group is not None:
            group.setCollapsed(False)

    def zoom() -> None:  # once the window has its final size, so the canvas shows the whole area
        canvas.setExtent(extent)
        canvas.refresh()
        if os.environ.get(ENV_DRAWN):  # as the rectangle tool reports a drag
            rect = _rect(os.environ[ENV_DRAWN])
            dock.tool.show_rectangle(rect)
            dock.tool.rectangleDrawn.emit(rect)

    def dump_bar() -> None:
        items = iface.messageBar().items()
        with open(out + ".bar.txt", "w", encoding="utf-8") as f:
            current = iface.messageBar().currentItem()
            f.write(f"current: {current.title() if current else None}: {current.text() if current else None}\n")
            for item in items:
                f.write(f"item: {item.title()}: {item.text()}\n")
            f.write(f"status: {dock.status_label.text()}\n")

    def shoot() -> None:
        dock.update_size()
        QApplication.processEvents()
        if superres:  # the mode's Strength slider sits below the fold of the dock's scroll area: scroll to it
            from qgis.PyQt.QtWidgets import QScrollArea

            area = dock.findChild(QScrollArea)
            if area is not None:
                area.ensureWidgetVisible(dock.conditions.strength_slider, 0, 40)
                QApplication.processEvents()
        if os.environ.get(ENV_GENERATE):
            dump_bar()
        widget = dock if os.environ.get(ENV_DOCK_ONLY) else window
        widget.grab().save(out, "PNG")
        project.setDirty(False)
        os._exit(0)  # QGIS's own exit path may ask questions or crash headless; the PNG is written

    def generate() -> None:
        model, steps, gsd = os.environ[ENV_GENERATE].split("|")
        if model:
            dock.model_combo.setCurrentIndex(dock.model_combo.findData(model))
            dock.model_combo.activated.emit(dock.model_combo.currentIndex())  # as a user's pick: its defaults
        if int(steps):
            dock.steps_spin.setValue(int(steps))
        if float(gsd):
            dock.gsd_spin.setValue(float(gsd))
        dock.update_size()
        if dock.generate() is None:
            shoot()  # refused: the message bar says why, and the screenshot shows it
        if float(cancel_after):
            QTimer.singleShot(int(float(cancel_after) * 1000), dock.cancel)
        wait_for_task()

    def wait_for_task() -> None:
        if dock.task is None and inpaint:  # the mask's outlines over the result: what was inpainted
            root = project.layerTreeRoot()
            for name in ("buildings",):
                node = root.findLayer(project.mapLayersByName(name)[0].id())
                root.insertChildNode(0, node.clone())
                node.parent().removeChildNode(node)
        if dock.task is None:
            QTimer.singleShot(2000, recall_menu if os.environ.get(ENV_RECALL) else shoot)  # the new layer renders
        else:
            QTimer.singleShot(500, wait_for_task)

    def recall_menu() -> None:
        from qgis.PyQt.QtCore import QPoint

        group = project.layerTreeRoot().findGroup("Generated")
        layer = group.findLayers()[0].layer()
        view = iface.layerTreeView()
        view.setCurrentLayer(layer)
        dock.prompt_edit.setPlainText("something else entirely")
        dock.seed_spin.setValue(123)
        dock.source_combo.setCurrentIndex(dock.source_combo.findData("canvas"))
        index = view.layerTreeModel().node2index(group.findLayers()[0])
        rect = view.visualRect(view.proxyModel().mapFromSource(index)) if hasattr(view, "proxyModel") else \
            view.visualRect(index)
        menu = view.menuProvider().createContextMenu()
        menu.popup(view.viewport().mapToGlobal(QPoint(rect.left() + 40, rect.bottom())))
        QApplication.processEvents()

        def grab_menu() -> None:
            base = os.path.splitext(out)[0]
            QApplication.primaryScreen().grabWindow(0).save(base + "_menu.png", "PNG")
            menu.close()
            plugin.recall_action.trigger()
            QTimer.singleShot(1500, shoot)

        QTimer.singleShot(800, grab_menu)

    def models_menu() -> None:
        from qgis.PyQt.QtCore import QPoint

        btn = dock.add_models_btn
        menu = btn.menu()
        menu.popup(btn.mapToGlobal(QPoint(0, btn.height())))
        QApplication.processEvents()

        def grab_menu() -> None:
            QApplication.primaryScreen().grabWindow(0).save(os.path.splitext(out)[0] + "_menu.png", "PNG")
            menu.close()
            QTimer.singleShot(300, shoot)

        QTimer.singleShot(800, grab_menu)

    QTimer.singleShot(1500, zoom)
    # let the canvas render and the dock lay out
    first = generate if os.environ.get(ENV_GENERATE) else models_menu if os.environ.get(ENV_MODELS_MENU) else shoot
    QTimer.singleShot(5000, first)


def _inside_qgis_safely() -> None:
    """Never leave QGIS hanging on an error dialog: write the traceback next to the PNG and quit."""
    try:
        inside_qgis()
    except Exception:  # noqa: BLE001
        import traceback

        from qgis.PyQt.QtWidgets import QApplication

        with open(os.environ[ENV_OUT] + ".error.txt", "w", encoding="utf-8") as f:
            f.write(traceback.format_exc())
        QApplication.instance().quit()


if os.environ.get(ENV_OUT) and "qgis.utils" in sys.modules and getattr(sys.modules["qgis.utils"], "iface", None):
    _inside_qgis_safely()
elif __name__ == "__main__":
    sys.exit(launch())
