"""What every rsgen Processing algorithm shares: the model parameters, running the engine with Processing's
feedback, engine errors as QgsProcessingException, and how a result layer is loaded.

The algorithms run on Processing's worker thread: they read layers (as every Processing algorithm does) but add
nothing to the project; results are loaded by Processing on the main thread, through the post-processors here.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from qgis.core import (QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback,
                       QgsProcessingLayerPostProcessorInterface, QgsProcessingParameterDefinition,
                       QgsProcessingParameterEnum,
                       QgsProcessingParameterNumber, QgsProcessingParameterString, QgsProperty)

from qgis.PyQt.QtGui import QIcon

from .. import settings
from ..core.errors import RsgenError
from ..core.request import (DEFAULT_MODEL, DEFAULT_SAMPLER, MAX_AUTOGUIDANCE, MAX_CLASS_GUIDANCE, PRECISIONS,
                             SAMPLERS)
from ..gis import icon_path, tr  # noqa: F401  (tr: re-exported to the algorithms)
from ..gis.layers import describe_generated, generation_record, layer_name, move_to_generated_group

PROMPT, MODEL, SEED, STEPS, GUIDANCE, SAMPLER = "PROMPT", "MODEL", "SEED", "STEPS", "GUIDANCE", "SAMPLER"
PRECISION, CLASS_GUIDANCE, AUTOGUIDANCE = "PRECISION", "CLASS_GUIDANCE", "AUTOGUIDANCE"
MODEL_PARAMS = (PROMPT, MODEL, SEED, STEPS, GUIDANCE, SAMPLER, PRECISION, CLASS_GUIDANCE, AUTOGUIDANCE)


class RsgenAlgorithm(QgsProcessingAlgorithm):
    """What every rsgen algorithm shares: no group (the provider is the group), the plugin's icon, and
    createInstance() making another of the same class."""

    def group(self) -> str:
        return ""

    def groupId(self) -> str:  # noqa: N802
        return ""

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def createInstance(self):  # noqa: N802
        return type(self)()


def sampler_names() -> List[str]:
    """Sampler ids, in the engine's order (static enum strings: `SAMPLER=ddim` works in scripts)."""
    try:
        from ..core.engine.samplers import SAMPLER_LABELS
    except ImportError:  # the engine is older than its samplers module: fall back to the request's list
        return list(SAMPLERS)
    return [name for name, _ in (SAMPLER_LABELS.items() if hasattr(SAMPLER_LABELS, "items") else SAMPLER_LABELS)]


def sampler_help() -> Dict[str, str]:
    """Sampler id -> what it is for (the SAMPLER parameter's help); empty with an engine that has no hints."""
    try:
        from ..core.engine.samplers import SAMPLER_HELP
    except ImportError:
        return {}
    return dict(SAMPLER_HELP)


_skipped_logged: set = set()


def model_ids() -> List[str]:
    """Ids of the model packages discoverable now (bundled, settings folders, $RSGEN_MODEL_DIRS). A broken
    package is left out and named once in QGIS's log (Log Messages, rsgen tab); it never hides the others."""
    from qgis.core import Qgis, QgsMessageLog

    from ..core.runtime.models import discover
    from ..gis.task import LOG_TAG

    errors: List[str] = []
    ids = [p.id for p in discover(settings.model_dirs(), errors)]
    for e in errors:
        if e not in _skipped_logged:
            _skipped_logged.add(e)
            QgsMessageLog.logMessage(f"Model package skipped: {e}", LOG_TAG, Qgis.MessageLevel.Warning)
    return ids


def target_crs(alg, parameters: Dict[str, Any], name: str, context: QgsProcessingContext):
    """The CRS parameter `name` when given, None when left empty; a value QGIS does not know as a CRS is refused
    (it used to be ignored, and the output written in the extent's CRS)."""
    if not given(parameters, name):
        return None
    crs = alg.parameterAsCrs(parameters, name, context)
    if not crs.isValid():
        raise QgsProcessingException(f"{name}: {parameters.get(name)!r} is not a CRS QGIS knows; give an EPSG code "
                                     "such as EPSG:32734, a WKT or PROJ string, or leave it empty for the extent's "
                                     "CRS.")
    return crs


def given(parameters: Dict[str, Any], name: str) -> bool:
    value = parameters.get(name)
    return isinstance(value, QgsProperty) or value not in (None, "")


def add_model_parameters(alg, prompt_default: str = "") -> None:
    """Prompt, model, seed, steps, guidance, sampler and (advanced) precision: the same in every algorithm."""
    alg.addParameter(QgsProcessingParameterString(PROMPT, tr("Prompt"), prompt_default, multiLine=True, optional=True))
    ids = model_ids()
    if ids:
        default = DEFAULT_MODEL if DEFAULT_MODEL in ids else ids[0]
        alg.addParameter(QgsProcessingParameterEnum(MODEL, tr("Model"), ids, False, default, False, True))
    else:  # nothing installed: still accept an id (or a package folder) so scripts and models stay valid
        alg.addParameter(QgsProcessingParameterString(MODEL, tr("Model id or package folder"), DEFAULT_MODEL))
    Num = QgsProcessingParameterNumber
    alg.addParameter(Num(SEED, tr("Seed"), Num.Type.Integer, 0, False, 0))
    # steps, guidance and sampler left empty: the model package's own defaults (core.runtime.sampling_defaults),
    # what the dock shows when the model is picked, so every door gives one model's image the same way
    steps = Num(STEPS, tr("Sampling steps (empty: the model's default)"), Num.Type.Integer, None, True, 1, 1000)
    steps.setHelp("Empty: the steps the model package names as its default (rsgen-base-1 10, rsgen-base 20).")
    alg.addParameter(steps)
    guidance = Num(GUIDANCE, tr("Guidance scale (empty: the model's default)"), Num.Type.Double, None, True, 0.0,
                   100.0)
    guidance.setHelp("How strongly the prompt and the layout steer the image (classifier-free guidance; "
                     "1 = off). Empty: the model package's default (rsgen-base-1 5, rsgen-base 3). Models with "
                     "guidance built in (distilled, such as rsgen-base 0.4) accept 1 to 5 and cost one UNet "
                     "evaluation per step at any scale; others cost two, one at 1.")
    alg.addParameter(guidance)
    names = sampler_names()
    sampler = QgsProcessingParameterEnum(SAMPLER, tr("Sampler (empty: the model's default)"), names, False, None,
                                         True, True)
    sampler.setHelp(f"Empty: the model package's default ({DEFAULT_SAMPLER} for rsgen-base-1 and rsgen-base). " +
                    " ".join(f"{n}: {h}" for n, h in sampler_help().items() if n in names))
    alg.addParameter(sampler)
    precision = QgsProcessingParameterEnum(PRECISION, tr("Precision"), list(PRECISIONS), False, "auto", False, True)
    precision.setHelp("auto: the model's int8 graph on the CPU (fp16 on a GPU) where the package has one - "
                      "faster, images close to but not identical with the exact graph's; fp32: the exact graph.")
    precision.setFlags(precision.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
    alg.addParameter(precision)
    cg = Num(CLASS_GUIDANCE, tr("Class guidance"), Num.Type.Double, None, True, 0.0, MAX_CLASS_GUIDANCE)
    cg.setHelp("How strongly the model's scene classifier steers the image towards the scene classes the prompt "
               "names (classifier guidance; 0 = off). Empty: the model's default. Only models with a class guide "
               "(rsgen-base 0.5) use it; prompts near none of its classes are not steered. The GeoTIFF's "
               "class_guidance tag says what was done.")
    cg.setFlags(cg.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
    alg.addParameter(cg)
    ag = Num(AUTOGUIDANCE, tr("Autoguidance"), Num.Type.Double, None, True, 1.0, MAX_AUTOGUIDANCE)
    ag.setHelp("How far each step moves away from what the model's weaker version predicts (autoguidance; 1 = "
               "off, one evaluation fewer a step). Empty: the model's default. Only models that carry a weak model "
               "(rsgen-base-1 from 1.0.0a19) use it. The GeoTIFF's autoguidance tag says what was done.")
    ag.setFlags(ag.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
    alg.addParameter(ag)


def model_values(alg, parameters: Dict[str, Any], context: QgsProcessingContext) -> Dict[str, Any]:
    """The request fields the model parameters give (plus the pixel budget setting)."""
    if isinstance(alg.parameterDefinition(MODEL), QgsProcessingParameterEnum):
        model = alg.parameterAsEnumString(parameters, MODEL, context)
    else:
        model = alg.parameterAsString(parameters, MODEL, context).strip() or DEFAULT_MODEL
    from ..core.runtime.sampling_defaults import resolve

    sampling = resolve(model, settings.model_dirs(),
                       steps=alg.parameterAsInt(parameters, STEPS, context) if given(parameters, STEPS) else None,
                       guidance=(alg.parameterAsDouble(parameters, GUIDANCE, context)
                                 if given(parameters, GUIDANCE) else None),
                       sampler=(alg.parameterAsEnumString(parameters, SAMPLER, context) or None)
                       if given(parameters, SAMPLER) else None)
    return dict(prompt=alg.parameterAsString(parameters, PROMPT, context), model=model,
                seed=alg.parameterAsInt(parameters, SEED, context), **sampling,
                precision=alg.parameterAsEnumString(parameters, PRECISION, context) or "auto",
                class_guidance=(alg.parameterAsDouble(parameters, CLASS_GUIDANCE, context)
                                if given(parameters, CLASS_GUIDANCE) else None),
                autoguidance=(alg.parameterAsDouble(parameters, AUTOGUIDANCE, context)
                              if given(parameters, AUTOGUIDANCE) else None),
                pixel_budget=settings.pixel_budget())


def check_tif(output: str) -> str:
    if not output.lower().endswith((".tif", ".tiff")):
        raise QgsProcessingException(f"The output must be a GeoTIFF file (.tif), not {output!r}.")
    return output


def as_processing_error(exc: BaseException) -> QgsProcessingException:
    """Engine and import errors as the one exception Processing shows as a plain message."""
    if isinstance(exc, ImportError):
        from ..gis.task import missing_package_message

        return QgsProcessingException(missing_package_message(exc))
    return QgsProcessingException(str(exc))


def run_engine(req, feedback: QgsProcessingFeedback, progress_range=(0.0, 1.0), log: bool = True):
    """core.engine.generate.generate with Processing's progress and cancel; returns the GenerationResult.

    Raises RsgenError / ImportError for the caller to turn into QgsProcessingException (see guarded())."""
    from ..core.engine.generate import generate
    from ..core.runtime.providers import choose

    lo, hi = progress_range
    if log:
        feedback.pushInfo(f"Model {req.model}, {req.steps} steps, sampler {req.sampler}, seed {req.seed}")

    def progress(fraction: float, message: str) -> None:
        feedback.setProgress(100.0 * (lo + (hi - lo) * fraction))
        feedback.setProgressText(message)

    result = generate(req, progress=progress, cancelled=feedback.isCanceled, model_dirs=settings.model_dirs(),
                      providers=choose(settings.provider_preference()))
    for warning in getattr(result, "warnings", []) or []:
        feedback.pushWarning(warning)
    return result


def report(result, feedback: QgsProcessingFeedback) -> float:
    """Log what was written; returns the mean GSD in metres."""
    from ..core.geo.georef import gsd_metres_mean

    g = result.grid
    gsd_m = gsd_metres_mean(g)
    graph = getattr(result, "denoiser_graph", "fp32")
    feedback.pushInfo(f"Wrote {result.path}: {g.width} x {g.height} px, GSD {gsd_m:.3g} m, "
                      f"{result.model_id} on {result.provider} ({graph} graph), {result.seconds:.1f} s")
    return gsd_m


class IntoGeneratedGroup(QgsProcessingLayerPostProcessorInterface):
    """Moves the loaded result into the "Generated" group, like the dock does (runs on the main thread)."""

    instance: Optional["IntoGeneratedGroup"] = None  # Processing keeps only a C++ pointer: we keep it alive

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802
        move_to_generated_group(layer, context.project())
        describe_generated(layer, generation_record(layer))

    @classmethod
    def create(cls) -> "IntoGeneratedGroup":
        """One shared, never-collected instance: it holds no state, and runs may overlap."""
        if cls.instance is None:
            cls.instance = cls()
        return cls.instance


def load_as_generated(context: QgsProcessingContext, path: str, name: str) -> None:
    """When Processing loads the result: give it a readable name and put it in the "Generated" group."""
    if context.willLoadLayerOnCompletion(path):
        details = context.layerToLoadOnCompletionDetails(path)
        details.name = name
        details.forceName = True
        details.setPostProcessor(IntoGeneratedGroup.create())


def result_name(prefix: str, req) -> str:
    return f"{prefix}: {layer_name(req.prompt, req.seed)}" if prefix else layer_name(req.prompt, req.seed)


def guarded(fn):
    """Decorator for processAlgorithm bodies: every engine mistake becomes a QgsProcessingException."""
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QgsProcessingException:
            raise
        except (RsgenError, ImportError) as exc:
            raise as_processing_error(exc) from exc
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper
