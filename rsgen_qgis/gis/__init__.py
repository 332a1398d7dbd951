"""QGIS adapters: extent/CRS capture, the generation task and adding results to the layer tree.

Also says where the plugin's resources (icons, translations) are: beside the package when installed from the
zip (<plugin>/resources), one level up in a source checkout (<repo>/resources).
"""
import os
from typing import Optional

from qgis.PyQt.QtCore import QCoreApplication

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOURCE_DIRS = (os.path.join(PLUGIN_DIR, "resources"), os.path.join(os.path.dirname(PLUGIN_DIR), "resources"))


def tr(text: str) -> str:
    """A text in the user's language: one Qt context, "rsgen_qgis", for the plugin, the dock and Processing
    (resources/i18n, tools/i18n.py)."""
    return QCoreApplication.translate("rsgen_qgis", text)


def resource_path(*parts: str) -> Optional[str]:
    """First existing resources/<parts...> of the installed or the source layout; None when absent."""
    for base in RESOURCE_DIRS:
        path = os.path.join(base, *parts)
        if os.path.exists(path):
            return path
    return None


def icon_path() -> str:
    return resource_path("icon.svg") or ""
