"""rsgen:generate, "Generate satellite image": the engine as a Processing algorithm.

Processing gives us the toolbox dialog, the Graphical Modeler, batch mode and qgis_process for free, so this
module only turns parameters into a GenerationRequest and engine errors into QgsProcessingException (whose
message Processing shows as-is). The algorithm runs on Processing's worker thread; it touches no layer.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (QgsCoordinateReferenceSystem, QgsProcessingAlgorithm, QgsProcessingContext,
                       QgsProcessingException, QgsProcessingFeedback, QgsProcessingLayerPostProcessorInterface,
                       QgsProcessingOutputNumber, QgsProcessingOutputString, QgsProcessingParameterCrs,
                       QgsProcessingParameterEnum, QgsProcessingParameterExtent, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination, QgsProcessingParameterString, QgsProperty)
from qgis.PyQt.QtGui import QIcon

from .. import settings
from ..core.errors import Cancelled, RsgenError
from ..core.request import DEFAULT_MODEL, SAMPLERS, GenerationRequest
from ..gis import icon_path
from ..gis.layers import layer_name, move_to_generated_group

EXTENT, TARGET_CRS, GSD, WIDTH, HEIGHT = "EXTENT", "TARGET_CRS", "GSD", "WIDTH", "HEIGHT"
PROMPT, MODEL, SEED, STEPS, GUIDANCE, SAMPLER, OUTPUT = "PROMPT", "MODEL", "SEED", "STEPS", "GUIDANCE", "SAMPLER", "OUTPUT"


def sampler_names() -> List[str]:
    """Sampler ids, in the engine's order (static enum strings: `SAMPLER=ddim` works in scripts)."""
    try:
        from ..core.samplers import SAMPLER_LABELS
    except ImportError:  # the engine is older than its samplers module: fall back to the request's list
        return list(SAMPLERS)
    return [name for name, _ in (SAMPLER_LABELS.items() if hasattr(SAMPLER_LABELS, "items") else SAMPLER_LABELS)]


def model_ids() -> List[str]:
    """Ids of the model packages discoverable now (bundled, settings folders, $RSGEN_MODEL_DIRS)."""
    from ..core.models import discover

    return [p.id for p in discover(settings.model_dirs())]


def _given(parameters: Dict[str, Any], name: str) -> bool:
    value = parameters.get(name)
    return isinstance(value, QgsProperty) or value not in (None, "")


class _IntoGeneratedGroup(QgsProcessingLayerPostProcessorInterface):
    """Moves the loaded result into the "Generated" group, like the dock does (runs on the main thread)."""

    instance: Optional["_IntoGeneratedGroup"] = None  # Processing keeps only a C++ pointer: we keep it alive

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802
        move_to_generated_group(layer, context.project())

    @classmethod
    def create(cls) -> "_IntoGeneratedGroup":
        """One shared, never-collected instance: it holds no state, and runs may overlap."""
        if cls.instance is None:
            cls.instance = cls()
        return cls.instance


class GenerateAlgorithm(QgsProcessingAlgorithm):
    def name(self) -> str:
        return "generate"

    def displayName(self) -> str:  # noqa: N802
        return "Generate satellite image"

    def group(self) -> str:
        return ""

    def groupId(self) -> str:  # noqa: N802
        return ""

    def icon(self) -> QIcon:
        return QIcon(icon_path())

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
            "Models are found in the plugin's models folder, in the folders of the setting "
            f"'{settings.KEY_MODEL_DIRS}' and in $RSGEN_MODEL_DIRS.")

    def createInstance(self) -> "GenerateAlgorithm":  # noqa: N802
        return GenerateAlgorithm()

    def initAlgorithm(self, config: Optional[dict] = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterExtent(EXTENT, "Extent"))
        self.addParameter(QgsProcessingParameterCrs(
            TARGET_CRS, "Output CRS (default: the extent's CRS, else the project CRS)", optional=True))
        Num = QgsProcessingParameterNumber
        self.addParameter(Num(GSD, "Pixel size (GSD) in the output CRS's units [or give width and height]",
                              Num.Double, None, True, 0.0))
        self.addParameter(Num(WIDTH, "Width in pixels (with height, instead of GSD)", Num.Integer, None, True, 1))
        self.addParameter(Num(HEIGHT, "Height in pixels (with width, instead of GSD)", Num.Integer, None, True, 1))
        self.addParameter(QgsProcessingParameterString(PROMPT, "Prompt", "", multiLine=True, optional=True))
        ids = model_ids()
        if ids:
            default = DEFAULT_MODEL if DEFAULT_MODEL in ids else ids[0]
            self.addParameter(QgsProcessingParameterEnum(MODEL, "Model", ids, False, default, False, True))
        else:  # nothing installed: still accept an id (or a package folder) so scripts and models stay valid
            self.addParameter(QgsProcessingParameterString(MODEL, "Model id or package folder", DEFAULT_MODEL))
        self.addParameter(Num(SEED, "Seed", Num.Integer, 0, False, 0))
        self.addParameter(Num(STEPS, "Sampling steps", Num.Integer, 20, False, 1, 1000))
        self.addParameter(Num(GUIDANCE, "Guidance scale", Num.Double, 3.0, False, 0.0, 100.0))
        names = sampler_names()
        self.addParameter(QgsProcessingParameterEnum(SAMPLER, "Sampler", names, False,
                                                     "dpmpp_2m" if "dpmpp_2m" in names else names[0], False, True))
        self.addParameter(QgsProcessingParameterRasterDestination(OUTPUT, "Generated image"))
        self.addOutput(QgsProcessingOutputString("PROVIDER", "ONNX Runtime execution provider that ran"))
        self.addOutput(QgsProcessingOutputNumber("GSD_METRES", "Ground sample distance in metres"))

    def checkParameterValues(self, parameters: Dict[str, Any],  # noqa: N802
                             context: QgsProcessingContext) -> Tuple[bool, str]:
        """Catch 'GSD or width+height' in the dialog and batch table, before anything runs."""
        msg = self._size_mistake(parameters)
        if msg:
            return False, msg
        return super().checkParameterValues(parameters, context)

    @staticmethod
    def _size_mistake(parameters: Dict[str, Any]) -> Optional[str]:
        has_gsd = _given(parameters, GSD)
        has_w, has_h = _given(parameters, WIDTH), _given(parameters, HEIGHT)
        if has_gsd and (has_w or has_h):
            return "Give either GSD (pixel size) or WIDTH and HEIGHT, not both."
        if not has_gsd and not (has_w and has_h):
            return "Give either GSD (pixel size in the output CRS's units) or both WIDTH and HEIGHT in pixels."
        return None

    def _crs(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> QgsCoordinateReferenceSystem:
        if _given(parameters, TARGET_CRS):
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
        if _given(parameters, GSD):
            size["gsd"] = self.parameterAsDouble(parameters, GSD, context)
        else:
            size["width"] = self.parameterAsInt(parameters, WIDTH, context)
            size["height"] = self.parameterAsInt(parameters, HEIGHT, context)
        if isinstance(self.parameterDefinition(MODEL), QgsProcessingParameterEnum):
            model = self.parameterAsEnumString(parameters, MODEL, context)
        else:
            model = self.parameterAsString(parameters, MODEL, context).strip() or DEFAULT_MODEL
        return GenerationRequest(
            extent=(rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()),
            crs=crs.toWkt(QgsCoordinateReferenceSystem.WKT2_2019), output=output,
            prompt=self.parameterAsString(parameters, PROMPT, context), model=model,
            seed=self.parameterAsInt(parameters, SEED, context),
            steps=self.parameterAsInt(parameters, STEPS, context),
            guidance=self.parameterAsDouble(parameters, GUIDANCE, context),
            sampler=self.parameterAsEnumString(parameters, SAMPLER, context),
            pixel_budget=settings.pixel_budget(), **size)

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        output = self.parameterAsOutputLayer(parameters, OUTPUT, context)
        if not output.lower().endswith((".tif", ".tiff")):
            raise QgsProcessingException(f"The output must be a GeoTIFF file (.tif), not {output!r}.")
        try:
            req = self.request(parameters, context, output)
            from ..core.georef import gsd_metres_mean
            from ..core.pipeline import generate
            from ..core.providers import choose

            feedback.pushInfo(f"Model {req.model}, {req.steps} steps, sampler {req.sampler}, seed {req.seed}")

            def progress(fraction: float, message: str) -> None:
                feedback.setProgress(100.0 * fraction)
                feedback.setProgressText(message)

            result = generate(req, progress=progress, cancelled=feedback.isCanceled,
                              model_dirs=settings.model_dirs(),
                              providers=choose(settings.provider_preference()))
            gsd_m = gsd_metres_mean(result.grid)
        except Cancelled as exc:
            raise QgsProcessingException(str(exc)) from exc
        except RsgenError as exc:
            raise QgsProcessingException(str(exc)) from exc
        except ImportError as exc:
            from ..gis.task import missing_package_message

            raise QgsProcessingException(missing_package_message(exc)) from exc
        for warning in getattr(result, "warnings", []) or []:
            feedback.pushWarning(warning)
        g = result.grid
        feedback.pushInfo(f"Wrote {result.path}: {g.width} x {g.height} px, GSD {gsd_m:.3g} m, "
                          f"{result.model_id} on {result.provider}, {result.seconds:.1f} s")
        if context.willLoadLayerOnCompletion(result.path):
            details = context.layerToLoadOnCompletionDetails(result.path)
            details.name = layer_name(req.prompt, req.seed)
            details.forceName = True
            details.setPostProcessor(_IntoGeneratedGroup.create())
        return {OUTPUT: result.path, "PROVIDER": result.provider, "GSD_METRES": gsd_m}
