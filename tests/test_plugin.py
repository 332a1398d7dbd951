"""The plugin loads and unloads cleanly in a QGIS interface (pytest-qgis's stub iface).

Clean unload matters because QGIS reloads plugins in place (disable/enable, Plugin Reloader): anything left
behind (a toolbar action, a dock, a Processing provider, an installed translator) points into unloaded code.
"""
import configparser
import os
from unittest import mock

import pytest
from qgis.core import QgsApplication
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, QEvent

import rsgen_qgis
from rsgen_qgis import plugin as plugin_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRENCH_TITLE = "Génération d'images satellite"


def _flush_deletes():
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    QCoreApplication.processEvents()


@pytest.fixture
def french_qm():
    """The plugin's own French translation (resources/i18n, tools/i18n.py)."""
    qm = os.path.join(ROOT, "resources", "i18n", "rsgen_qgis_fr.qm")
    assert os.path.isfile(qm)
    return qm, True


@pytest.fixture
def spied_iface(qgis_iface):
    """The stub iface with its add/remove methods recorded (the stub's own versions do nothing)."""
    names = ("addToolBarIcon", "removeToolBarIcon", "addPluginToRasterMenu", "removePluginRasterMenu",
             "addDockWidget", "removeDockWidget")
    with mock.patch.multiple(qgis_iface, **{n: mock.MagicMock(name=n) for n in names}):
        yield qgis_iface


def test_version_matches_metadata():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "metadata.txt"), encoding="utf-8")
    general = cfg["general"]
    assert general["version"] == rsgen_qgis.__version__
    assert general["hasProcessingProvider"] == "yes"
    assert general["qgisMinimumVersion"] == "3.22"
    assert os.path.realpath(os.path.join(ROOT, "rsgen_qgis", "metadata.txt")) == os.path.join(ROOT, "metadata.txt")


def test_load_and_unload_cleanly(spied_iface, qgis_new_project, french_qm, monkeypatch):
    qm_path, real_translation = french_qm
    monkeypatch.setattr(plugin_mod, "translation_file", lambda locale=None: qm_path)
    registry = QgsApplication.processingRegistry()
    assert registry.providerById("rsgen") is None

    plugin = rsgen_qgis.classFactory(spied_iface)
    plugin.initGui()
    action, translator = plugin.action, plugin.translator
    assert translator is not None
    if real_translation:
        assert action.text() == FRENCH_TITLE
    spied_iface.addToolBarIcon.assert_called_once_with(action)
    menu_actions = [c[0][1] for c in spied_iface.addPluginToRasterMenu.call_args_list]
    assert menu_actions == [action, plugin.dataset_action]
    dataset_action = plugin.dataset_action
    provider = registry.providerById("rsgen")
    assert provider is not None and provider.name() == "rsgen"
    alg = registry.algorithmById("rsgen:generate")
    assert alg is not None and alg.displayName() == "Générer une image satellite"  # the French .qm is installed

    assert plugin.dock is None  # built on first use only
    plugin.show_dock()
    dock = plugin.dock
    assert dock is not None and not dock.isHidden()
    spied_iface.addDockWidget.assert_called_once()
    assert spied_iface.addDockWidget.call_args[0][1] is dock
    dock.close()  # closing the dock unchecks the toolbar button
    assert not action.isChecked()
    action.setChecked(True)  # and the button brings it back
    assert not dock.isHidden()
    band = dock.tool.band
    assert band.scene() is spied_iface.mapCanvas().scene()

    plugin.unload()
    _flush_deletes()
    spied_iface.removeToolBarIcon.assert_called_once_with(action)
    assert [c[0][1] for c in spied_iface.removePluginRasterMenu.call_args_list] == [action, dataset_action]
    spied_iface.removeDockWidget.assert_called_once_with(dock)
    assert registry.providerById("rsgen") is None
    assert registry.algorithmById("rsgen:generate") is None
    assert not QCoreApplication.removeTranslator(translator), "translator still installed after unload"
    assert QCoreApplication.translate("rsgen_qgis", "Satellite image generation") == "Satellite image generation"
    assert sip.isdeleted(dock) and sip.isdeleted(action) and sip.isdeleted(dataset_action)
    assert plugin.dock is None and plugin.action is None and plugin.dataset_action is None and plugin.provider is None and plugin.translator is None
    assert band.scene() is None, "the rubber band is still on the map canvas"


def test_reload_twice(spied_iface, qgis_new_project):
    """Disable/enable in one session: a second load registers again, a second unload leaves nothing."""
    registry = QgsApplication.processingRegistry()
    for _ in range(2):
        plugin = rsgen_qgis.classFactory(spied_iface)
        plugin.initGui()
        plugin.show_dock()
        assert registry.providerById("rsgen") is not None
        plugin.unload()
        _flush_deletes()
        assert registry.providerById("rsgen") is None


def test_processing_only_load_without_iface():
    """qgis_process calls classFactory(None) then initProcessing() only; unload must cope with that too."""
    registry = QgsApplication.processingRegistry()
    plugin = rsgen_qgis.classFactory(None)
    plugin.initProcessing()
    plugin.initProcessing()  # idempotent: QGIS may call it again after initGui
    assert registry.providerById("rsgen") is not None
    plugin.unload()
    assert registry.providerById("rsgen") is None


def test_unload_while_drawing_restores_canvas(spied_iface, qgis_new_project):
    plugin = rsgen_qgis.classFactory(spied_iface)
    plugin.initGui()
    plugin.show_dock()
    canvas = spied_iface.mapCanvas()
    tool = plugin.dock.tool
    plugin.dock.draw_btn.setChecked(True)
    assert canvas.mapTool() is tool
    plugin.unload()
    assert canvas.mapTool() is not tool
    _flush_deletes()
    assert sip.isdeleted(tool), "the rectangle map tool outlived the plugin"


def test_dataset_menu_opens_the_processing_dialog(spied_iface, qgis_new_project, monkeypatch):
    import processing

    opened = []
    monkeypatch.setattr(processing, "execAlgorithmDialog", lambda alg_id, *a, **k: opened.append(alg_id))
    plugin = rsgen_qgis.classFactory(spied_iface)
    plugin.initGui()
    try:
        assert QgsApplication.processingRegistry().algorithmById("rsgen:dataset") is not None
        plugin.dataset_action.trigger()
        assert opened == ["rsgen:dataset"]
    finally:
        plugin.unload()
        _flush_deletes()
