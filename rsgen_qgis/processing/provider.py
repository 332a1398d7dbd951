"""The Processing provider "rsgen": one place for the algorithms, and GeoTIFF as the only raster output."""
from __future__ import annotations

from typing import List

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..gis import icon_path
from .dataset import GenerateDatasetAlgorithm
from .generate import GenerateAlgorithm
from .layout import LayoutGenerateAlgorithm, PreviewLayoutAlgorithm
from .raster_conditions import InpaintAlgorithm, SuperResolveAlgorithm, VariationAlgorithm
from .regenerate import RegenerateAlgorithm


class RsgenProvider(QgsProcessingProvider):
    def id(self) -> str:  # noqa: A003  (QGIS API name)
        return "rsgen"

    def name(self) -> str:
        return "rsgen"

    def longName(self) -> str:  # noqa: N802
        return "rsgen: synthetic satellite imagery"

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def svgIconPath(self) -> str:  # noqa: N802
        return icon_path()

    def loadAlgorithms(self) -> None:  # noqa: N802
        for alg in (GenerateAlgorithm, LayoutGenerateAlgorithm, PreviewLayoutAlgorithm, InpaintAlgorithm,
                    SuperResolveAlgorithm, VariationAlgorithm, RegenerateAlgorithm, GenerateDatasetAlgorithm):
            self.addAlgorithm(alg())

    def supportedOutputRasterLayerExtensions(self) -> List[str]:  # noqa: N802
        """The engine writes Cloud Optimized GeoTIFFs only; offering other formats would be a lie."""
        return ["tif"]

    def defaultRasterFileExtension(self) -> str:  # noqa: N802
        return "tif"
