"""rsgen_qgis: a QGIS plugin (and a QGIS-free engine) that generates synthetic satellite imagery.

QGIS calls classFactory(iface). Everything QGIS-related is imported lazily inside it, so that
`python -m rsgen_qgis` (CLI), the batch runner and the core tests can import this package without QGIS.
"""
from .core import VERSION as __version__  # one version for the plugin, the engine and GeoTIFF tags


def classFactory(iface):  # noqa: N802  (name fixed by QGIS)
    """Entry point QGIS calls; iface is None under qgis_process (Processing only)."""
    from .plugin import RsgenPlugin

    return RsgenPlugin(iface)


__all__ = ["__version__", "classFactory"]
