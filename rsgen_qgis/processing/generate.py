"""rsgen:generate, "Generate satellite image": the engine as a Processing algorithm.

Processing gives us the toolbox dialog, the Graphical Modeler, batch mode and qgis_process for free, so this
module only turns parameters into a GenerationRequest and engine errors into QgsProcessingException (whose
message Processing shows as-is). The algorithm runs on Processing's worker thread; it touches no layer.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (QgsCoordinateReferenceSystem, QgsProcessingContext,
                       QgsProcessingException, QgsProcessingFeedback, QgsProcessingOutputNumber,
                       QgsProcessingOutputString, QgsProcessingParameterBoolean, QgsProcessingParameterCrs,
                       QgsProcessingParameterDefinition, QgsProcessingParameterExtent,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterDestination)

from .. import settings
from ..core.request import GenerationRequest
from ..gis.layers import layer_name
from .common import (RsgenAlgorithm, add_model_parameters, check_tif, given, guarded, load_as_generated,
                     model_ids, model_values, report, run_engine, sampler_names, tr)  # noqa: F401  (re-exported)

EXTENT, TARGET_CRS, GSD, WIDTH, HEIGHT = "EXTENT", "TARGET_CRS", "GSD", "WIDTH", "HEIGHT"
PROMPT, MODEL, SEED, STEPS, GUIDANCE, SAMPLER, OUTPUT = "PROMPT", "MODEL", "SEED", "STEPS", "GUIDANCE", "SAMPLER", "OUTPUT"
LARGE_AREA, CASCADE = "LARGE_AREA", "CASCADE"




class GenerateAlgorithm(RsgenAlgorithm):
    def name(self) -> str:
        return "generate"

    def displayName(self) -> str:  # noqa: N802
        return tr("Generate satellite image")

    def tags(self) -> List[str]:
        return ["satellite", "synthetic", "diffusion", "generate", "image", "onnx", "raster", "remote sensing"]

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Generates a synthetic satellite image for an extent with a local diffusion model (ONNX Runtime) and "
            "writes it as a Cloud Optimized GeoTIFF tagged synthetic=true with its prompt, seed and model.\n\n"
            "Extent: the area; Output CRS: defaults to the extent's CRS (else the project's).\n"
            "Give either GSD, the pixel size in the output CRS's units (metres for UTM, degrees for EPSG:4326; "
            "the grid snaps to whole multiples of it), or both WIDTH and HEIGHT in pixels.\n"
            "Same seed + same place + same settings = same pixels.\n"
            "Large area: lifts the pixel budget; the area is made in world-anchored blocks written to disk as "
            "they finish (memory does not grow with the area), and overlapping runs agree pixel for pixel.\n"
            "Coarse-to-fine (advanced, needs GSD): first generates the area at that many times the GSD, then "
            "the requested GSD held to it (each block of factor x factor pixels averages to the coarse pixel); "
            "with a model that carries a coarse base model, the factor of that model uses it.\n"
            "Models are found in the plugin's models folder, in the folders of the setting "
            f"'{settings.KEY_MODEL_DIRS}' and in $RSGEN_MODEL_DIRS.")

    def initAlgorithm(self, config: Optional[dict] = None) -> None:  # noqa: N802
        self.add_area_parameters()
        add_model_parameters(self)
        self.addParameter(QgsProcessingParameterBoolean(
            LARGE_AREA, tr("Large area (no pixel budget; world-anchored blocks written to disk as they are done)"),
            False, optional=True))
        cascade = QgsProcessingParameterNumber(CASCADE, tr("Coarse-to-fine factor (0 = off; e.g. 4)"),
                                               QgsProcessingParameterNumber.Type.Integer, 0, True, 0, 16)
        cascade.setFlags(cascade.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(cascade)
        self.addParameter(QgsProcessingParameterRasterDestination(OUTPUT, tr("Generated image")))
        self.addOutput(QgsProcessingOutputString("PROVIDER", "ONNX Runtime execution provider that ran"))
        self.addOutput(QgsProcessingOutputNumber("GSD_METRES", "Ground sample distance in metres"))

    def add_area_parameters(self) -> None:
        """Extent, output CRS, and GSD or width + height: the request's grid."""
        self.addParameter(QgsProcessingParameterExtent(EXTENT, tr("Extent")))
        self.addParameter(QgsProcessingParameterCrs(
            TARGET_CRS, tr("Output CRS (default: the extent's CRS, else the project CRS)"), optional=True))
        Num = QgsProcessingParameterNumber
        self.addParameter(Num(GSD, tr("Pixel size (GSD) in the output CRS's units [or give width and height]"),
                              Num.Type.Double, None, True, 0.0))
        self.addParameter(Num(WIDTH, tr("Width in pixels (with height, instead of GSD)"), Num.Type.Integer, None,
                              True, 1))
        self.addParameter(Num(HEIGHT, tr("Height in pixels (with width, instead of GSD)"), Num.Type.Integer, None,
                              True, 1))

    def checkParameterValues(self, parameters: Dict[str, Any],  # noqa: N802
                             context: QgsProcessingContext) -> Tuple[bool, str]:
        """Catch 'GSD or width+height' in the dialog and batch table, before anything runs."""
        msg = self._size_mistake(parameters)
        if msg:
            return False, msg
        return super().checkParameterValues(parameters, context)

    @staticmethod
    def _size_mistake(parameters: Dict[str, Any]) -> Optional[str]:
        has_gsd = given(parameters, GSD)
        has_w, has_h = given(parameters, WIDTH), given(parameters, HEIGHT)
        if has_gsd and (has_w or has_h):
            return "Give either GSD (pixel size) or WIDTH and HEIGHT, not both."
        if not has_gsd and not (has_w and has_h):
            return "Give either GSD (pixel size in the output CRS's units) or both WIDTH and HEIGHT in pixels."
        return None

    def _crs(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> QgsCoordinateReferenceSystem:
        if given(parameters, TARGET_CRS):
            crs = self.parameterAsCrs(parameters, TARGET_CRS, context)
            if crs.isValid():
                return crs
        crs = self.parameterAsExtentCrs(parameters, EXTENT, context)
        if not crs.isValid() and context.project() is not None:
            crs = context.project().crs()
        if not crs.isValid():
            raise QgsProcessingException(
                "The output CRS is unknown: set TARGET_CRS, or give the extent with its CRS "
                "(e.g. 'xmin,xmax,ymin,ymax [EPSG:32734]').")
        return crs

    def request(self, parameters: Dict[str, Any], context: QgsProcessingContext, output: str) -> GenerationRequest:
        """Parameters -> GenerationRequest (raises RsgenError for values the engine refuses)."""
        msg = self._size_mistake(parameters)
        if msg:
            raise QgsProcessingException(msg)
        crs = self._crs(parameters, context)
        rect = self.parameterAsExtent(parameters, EXTENT, context, crs)
        if rect.isNull() or rect.isEmpty():
            raise QgsProcessingException("The extent is empty; give an extent with a width and a height.")
        size: Dict[str, Any] = {}
        if given(parameters, GSD):
            size["gsd"] = self.parameterAsDouble(parameters, GSD, context)
        else:
            size["width"] = self.parameterAsInt(parameters, WIDTH, context)
            size["height"] = self.parameterAsInt(parameters, HEIGHT, context)
        return GenerationRequest(
            extent=(rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()),
            crs=crs.toWkt(QgsCoordinateReferenceSystem.WktVariant.WKT2_2019), output=output,
            large_area=bool(self.parameterDefinition(LARGE_AREA)) and given(parameters, LARGE_AREA)
            and self.parameterAsBool(parameters, LARGE_AREA, context),
            cascade=self.parameterAsInt(parameters, CASCADE, context)
            if self.parameterDefinition(CASCADE) and given(parameters, CASCADE) else 0,
            **(model_values(self, parameters, context) if self.parameterDefinition(MODEL) else {}), **size)

    def with_conditions(self, req: GenerationRequest, parameters: Dict[str, Any], context: QgsProcessingContext,
                        feedback: QgsProcessingFeedback) -> GenerationRequest:
        """Hook for algorithms that add conditions made from layers (see processing.layout)."""
        return req

    @guarded
    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        output = check_tif(self.parameterAsOutputLayer(parameters, OUTPUT, context))
        req = self.with_conditions(self.request(parameters, context, output), parameters, context, feedback)
        if req.large_area:
            from ..core.engine.blocks import estimate_request
            from ..core.runtime.providers import choose

            n_win, secs = estimate_request(req, settings.model_dirs(), choose(settings.provider_preference()))
            feedback.pushInfo(f"Large area: {n_win} windows per step x {req.steps} steps, estimated "
                              f"{secs / 60:.1f} min on this machine; progress is shown per window")
        result = run_engine(req, feedback)
        gsd_m = report(result, feedback)
        load_as_generated(context, result.path, layer_name(req.prompt, req.seed))
        return {OUTPUT: result.path, "PROVIDER": result.provider, "GSD_METRES": gsd_m}
