"""The one-line messages a GIS user sees when QGIS's Python lacks a package (never a traceback dialog)."""
from rsgen_qgis.gis.task import missing_package_message


def test_missing_onnxruntime_says_how_to_fix_it():
    exc = ImportError("No module named 'onnxruntime'", name="onnxruntime")
    msg = missing_package_message(exc)
    assert "'onnxruntime'" in msg and "PYTHONPATH" in msg and "--break-system-packages" in msg


def test_missing_plugin_module_says_reinstall():
    exc = ImportError("No module named 'rsgen_qgis.core.tiling'", name="rsgen_qgis.core.tiling")
    msg = missing_package_message(exc)
    assert "Reinstall the plugin" in msg and "rsgen_qgis.core.tiling" in msg
