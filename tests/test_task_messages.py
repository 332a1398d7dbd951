"""The one-line messages a GIS user sees when QGIS's Python lacks a package (never a traceback dialog)."""
import os
import sys

from rsgen_qgis.gis.task import install_command, missing_package_message


def test_missing_onnxruntime_says_how_to_fix_it():
    """Here (QGIS 3.22 on Debian 12) QGIS's Python is /usr/bin/python3.11, marked EXTERNALLY-MANAGED (PEP 668)."""
    exc = ImportError("No module named 'onnxruntime'", name="onnxruntime")
    msg = missing_package_message(exc)
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    python = os.path.join(sys.base_prefix, "bin", f"python{v}")
    assert "'onnxruntime'" in msg and "PYTHONPATH" in msg and f"{python} -m pip install" in msg
    assert os.path.exists(python)
    if os.path.exists(os.path.join(sys.base_prefix, "lib", f"python{v}", "EXTERNALLY-MANAGED")):
        assert "--user --break-system-packages onnxruntime" in msg


def test_the_install_command_follows_the_platform():
    here = {"/opt/qgis/bin/python3.12", "/opt/qgis/lib/python3.12/EXTERNALLY-MANAGED"}
    linux = install_command("onnxruntime", "linux", "/opt/qgis", (3, 12), here.__contains__)
    assert linux == "/opt/qgis/bin/python3.12 -m pip install --user --break-system-packages onnxruntime"
    mac = install_command("onnxruntime", "darwin", "/Applications/QGIS.app/Contents/Frameworks/Python",
                          (3, 11), lambda p: p.endswith("bin/python3.11"))
    assert mac == "/Applications/QGIS.app/Contents/Frameworks/Python/bin/python3.11 -m pip install --user onnxruntime"
    assert install_command("onnxruntime", "linux", "/nowhere", (3, 12), lambda p: False) == \
        "python3 -m pip install --user onnxruntime"
    win = install_command("onnxruntime", "win32", r"C:\Program Files\QGIS 3.40\apps\Python312", (3, 12))
    assert win == "in the OSGeo4W Shell (Start menu, next to QGIS): python -m pip install onnxruntime"


def test_the_pip_name_is_given_not_the_module_name():
    msg = missing_package_message(ImportError("No module named 'yaml'", name="yaml"))
    command = msg.split("(", 1)[1].split(")", 1)[0]
    assert " -m pip install --user" in command and command.endswith(" pyyaml")


def test_missing_plugin_module_says_reinstall():
    exc = ImportError("No module named 'rsgen_qgis.core.engine.tiling'", name="rsgen_qgis.core.engine.tiling")
    msg = missing_package_message(exc)
    assert "Reinstall the plugin" in msg and "rsgen_qgis.core.engine.tiling" in msg
