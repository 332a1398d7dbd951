"""The plugin object QGIS holds: toolbar button + Raster menu entry for the dock, Processing provider, translator.

unload() must undo everything initGui()/initProcessing() did (QGIS calls it on disable, uninstall and
Plugin Reloader); anything left behind would point into a module that is gone and crash QGIS later.
The dock is built on first use, so a QGIS start with the plugin enabled costs no engine import.
"""
from __future__ import annotations

import os
from typing import Optional

from qgis.core import Qgis, QgsApplication, QgsProject, QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QLocale, Qt, QTranslator
from qgis.PyQt.QtGui import QIcon

try:
    from qgis.PyQt.QtGui import QAction  # Qt 6 (QGIS 4)
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # Qt 5 (QGIS 3)

from .gis import icon_path, resource_path, tr

MENU = "&Satellite image generation"
TITLE = "Satellite image generation"


def raster_layer_type():
    """The layer type of rasters, for addCustomActionForLayerType: Qgis.LayerType from QGIS 3.30 on (QGIS 4),
    QgsMapLayerType before."""
    layer_type = getattr(Qgis, "LayerType", None)
    if layer_type is not None:
        return layer_type.Raster
    from qgis.core import QgsMapLayerType
    return QgsMapLayerType.RasterLayer


def translation_file(locale: Optional[str] = None) -> Optional[str]:
    """resources/i18n/rsgen_qgis_<ll>.qm for the user's QGIS locale, or None (English needs none)."""
    loc = locale or str(QgsSettings().value("locale/userLocale", "") or QLocale().name())
    return resource_path("i18n", f"rsgen_qgis_{loc[:2]}.qm") if loc else None


class RsgenPlugin:
    def __init__(self, iface):
        """iface is None under qgis_process, which only calls initProcessing()."""
        self.iface = iface
        self.provider = None
        self.action: Optional[QAction] = None
        self.dataset_action: Optional[QAction] = None
        self.recall_action: Optional[QAction] = None
        self.dock = None
        self.translator: Optional[QTranslator] = None

    # -- Processing ----------------------------------------------------------------------------------------
    def initProcessing(self) -> None:  # noqa: N802  (name fixed by QGIS)
        if self.provider is None:
            from .processing.provider import RsgenProvider

            self.provider = RsgenProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    # -- GUI -----------------------------------------------------------------------------------------------
    def initGui(self) -> None:  # noqa: N802
        self._install_translator()
        self.initProcessing()
        parent = self.iface.mainWindow()
        self.action = QAction(QIcon(icon_path()), tr(TITLE), parent)
        self.action.setObjectName("rsgenShowDock")
        self.action.setCheckable(True)
        self.action.setStatusTip(tr("Generate a synthetic satellite image for a map extent"))
        self.action.toggled.connect(self._set_dock_visible)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(tr(MENU), self.action)
        self.dataset_action = QAction(QIcon(icon_path()), tr("Generate dataset…"), parent)
        self.dataset_action.setObjectName("rsgenDataset")
        self.dataset_action.setStatusTip(tr("Synthetic images with object boxes exported as COCO, DOTA and GeoJSON"))
        self.dataset_action.triggered.connect(self.open_dataset_dialog)
        self.iface.addPluginToRasterMenu(tr(MENU), self.dataset_action)
        # Layers panel, right click on a generated image: its settings back into the dock
        self.recall_action = QAction(QIcon(icon_path()), tr("Reuse Generation Settings"), parent)
        self.recall_action.setObjectName("rsgenRecall")
        self.recall_action.setToolTip(tr("Fill the Satellite image generation panel with this image's extent, "
                                         "pixel size, prompt, seed and model, to make it again or a variant"))
        self.recall_action.triggered.connect(self.recall_active_layer)
        self.iface.addCustomActionForLayerType(self.recall_action, "", raster_layer_type(), False)
        QgsProject.instance().layersAdded.connect(self._offer_recall)
        self._offer_recall(QgsProject.instance().mapLayers().values())

    def _offer_recall(self, layers) -> None:
        """Add the Reuse action to the context menu of the layers that are images we generated, and say in their
        metadata that they are synthetic (layers from Processing, or from a project saved without it)."""
        from .gis.layers import describe_generated, generation_record

        for layer in layers:
            rec = generation_record(layer)
            if self.recall_action is not None and rec is not None:
                self.iface.addCustomActionForLayer(self.recall_action, layer)
                describe_generated(layer, rec)

    def recall_active_layer(self) -> None:
        """The action's slot: the layer the user right-clicked is the active one."""
        from .gis.layers import generation_record

        layer = self.iface.activeLayer()
        rec = generation_record(layer)
        if rec is None:
            self.iface.messageBar().pushMessage(tr(TITLE), tr("This layer is not an image generated by this "
                                                              "plugin (it has no generation record)."),
                                                Qgis.MessageLevel.Warning, 6)
            return
        self.show_dock()
        notes = self.dock.recall(rec)
        text = tr("Settings of “{name}” are in the panel: Generate makes it again, Random seed a variant.").format(
            name=layer.name())
        self.iface.messageBar().pushMessage(tr(TITLE), " ".join([text] + notes),
                                            Qgis.MessageLevel.Warning if notes else Qgis.MessageLevel.Info,
                                            0 if notes else 8)

    def open_dataset_dialog(self) -> None:
        """The Processing dialog of rsgen:dataset: a long batch job with its own log, parameters and history."""
        import processing

        processing.execAlgorithmDialog("rsgen:dataset")

    def _install_translator(self) -> None:
        path = translation_file()
        if path and os.path.isfile(path):
            translator = QTranslator()
            if translator.load(path):
                # installTranslator() returns False for a file without messages yet still installs it:
                # keep the reference either way, so unload() can remove it.
                QCoreApplication.installTranslator(translator)
                self.translator = translator

    def _set_dock_visible(self, visible: bool) -> None:
        if visible and self.dock is None:
            from .gui.dock import GenerationDock

            self.dock = GenerationDock(self.iface, self.iface.mainWindow())
            self.dock.closedStateChanged.connect(lambda closed: self.action and self.action.setChecked(not closed))
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        if self.dock is not None:
            self.dock.setUserVisible(visible)

    def show_dock(self) -> None:
        """Open the dock (the toolbar button does the same)."""
        if self.action is not None:
            self.action.setChecked(True)

    # -- teardown ------------------------------------------------------------------------------------------
    def unload(self) -> None:
        if self.dock is not None:
            self.dock.cleanup()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removeToolBarIcon(self.action)
            self.iface.removePluginRasterMenu(tr(MENU), self.action)
            self.action.deleteLater()
            self.action = None
        if self.recall_action is not None:
            try:
                QgsProject.instance().layersAdded.disconnect(self._offer_recall)
            except TypeError:
                pass
            self.iface.removeCustomActionForLayerType(self.recall_action)
            self.recall_action.deleteLater()
            self.recall_action = None
        if self.dataset_action is not None:
            self.iface.removePluginRasterMenu(tr(MENU), self.dataset_action)
            self.dataset_action.deleteLater()
            self.dataset_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.translator is not None:
            QCoreApplication.removeTranslator(self.translator)
            self.translator = None
