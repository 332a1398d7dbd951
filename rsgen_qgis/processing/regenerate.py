"""rsgen:regenerate, "Generate again from an image's settings": the request a generated GeoTIFF records
(core.recall), run again with another seed or prompt where given.

Batch mode over seeds gives variants of one place; the Graphical Modeler can chain it after rsgen:generate. The
same seed and prompt give the same pixels (as `python -m rsgen_qgis regenerate` and the Layers panel's Reuse
Generation Settings do). Images made with a layout, mask or guide are refused with the reason: their record says
that they were given, not their pixels.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from qgis.core import (QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback,
                       QgsProcessingOutputString, QgsProcessingParameterNumber, QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString)

from .. import settings
from ..gis.layers import layer_name
from .common import (RsgenAlgorithm, check_tif, given, guarded, load_as_generated, report, run_engine,
                     tr)

SOURCE, SEED, PROMPT, STEPS, OUTPUT = "SOURCE", "SEED", "PROMPT", "STEPS", "OUTPUT"


class RegenerateAlgorithm(RsgenAlgorithm):
    def name(self) -> str:
        return "regenerate"

    def displayName(self) -> str:  # noqa: N802
        return tr("Generate again from an image's settings")

    def tags(self) -> List[str]:
        return ["satellite", "synthetic", "variant", "seed", "reproduce", "regenerate", "again"]

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Reads the settings a generated image records (extent, CRS, pixel size, prompt, seed, steps, "
                "guidance, sampler, model) and generates again: with the same seed, the same pixels; with another "
                "seed (batch mode: one row per seed), a variant of the same place on the same grid. Prompt and "
                "steps, when given, replace the recorded ones.\n\n"
                "Images made with a layout, an inpainting mask or a guide cannot be made again from the file "
                "alone (it records that they were given, not their pixels): run their algorithm again with the "
                "same layers. A warning says when the installed model is not the one the image was made with.")

    def initAlgorithm(self, config: Optional[dict] = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(SOURCE, tr("Generated image to take the settings from")))
        Num = QgsProcessingParameterNumber
        self.addParameter(Num(SEED, tr("Seed (empty: the image's own)"), Num.Type.Integer, None, True, 0))
        self.addParameter(QgsProcessingParameterString(PROMPT, tr("Prompt (empty: the image's own)"), None,
                                                       multiLine=True, optional=True))
        self.addParameter(Num(STEPS, tr("Sampling steps (empty: the image's own)"), Num.Type.Integer, None, True, 1,
                              1000))
        self.addParameter(QgsProcessingParameterRasterDestination(OUTPUT, tr("New image")))
        self.addOutput(QgsProcessingOutputString("PROVIDER", "ONNX Runtime execution provider that ran"))

    @guarded
    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        from ..core.recall import regenerate_request

        layer = self.parameterAsRasterLayer(parameters, SOURCE, context)
        if layer is None:
            raise QgsProcessingException("Choose the generated image to take the settings from.")
        source = layer.source().split("|")[0]
        output = check_tif(self.parameterAsOutputLayer(parameters, OUTPUT, context))
        changes: Dict[str, Any] = {}
        if given(parameters, SEED):
            changes["seed"] = self.parameterAsInt(parameters, SEED, context)
        if self.parameterAsString(parameters, PROMPT, context).strip():
            changes["prompt"] = self.parameterAsString(parameters, PROMPT, context).strip()
        if given(parameters, STEPS):
            changes["steps"] = self.parameterAsInt(parameters, STEPS, context)
        req, notes, warning = regenerate_request(source, output, settings.model_dirs(), **changes)
        for note in notes + ([warning] if warning else []):
            feedback.pushWarning(note)
        result = run_engine(req, feedback)
        report(result, feedback)
        load_as_generated(context, result.path, layer_name(req.prompt, req.seed))
        return {OUTPUT: result.path, "PROVIDER": result.provider}
