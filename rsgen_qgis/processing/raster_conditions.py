"""Raster layers as conditions, as Processing algorithms: inpainting, super-resolution and variation.

All three read the raster through gis.rasters (any GDAL source; 16-bit, float, single-band and paletted rasters
become 8-bit RGB there, and every conversion is logged as a warning). Inpainting and variation write on the
raster's own grid and CRS, so the result overlays the input pixel for pixel; super-resolution keeps the
footprint and makes the pixels 4 times smaller.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from qgis.core import (QgsProcessing, QgsProcessingContext, QgsProcessingFeedback,
                       QgsProcessingOutputNumber, QgsProcessingOutputString, QgsProcessingParameterBoolean,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterVectorLayer)

from ..core.request import SR_STRENGTH_DEFAULT, Conditions
from .common import (RsgenAlgorithm, add_model_parameters, check_tif, guarded, load_as_generated, model_values, report,
                     result_name, run_engine, tr)

INPUT, MASK, SELECTED_ONLY, STRENGTH, OUTPUT = "INPUT", "MASK", "SELECTED_ONLY", "STRENGTH", "OUTPUT"
GUIDE_CONSISTENCY, GROW_M = "GUIDE_CONSISTENCY", "GROW_M"


class _RasterConditionAlgorithm(RsgenAlgorithm):
    """INPUT raster + model parameters -> OUTPUT GeoTIFF; subclasses say which grid and which conditions."""

    label = ""  # prefix of the loaded layer's name

    def initAlgorithm(self, config: Optional[dict] = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(INPUT, tr("Raster layer")))
        self.add_extra_parameters()
        add_model_parameters(self)
        self.addParameter(QgsProcessingParameterRasterDestination(OUTPUT, self.output_label()))
        self.addOutput(QgsProcessingOutputString("PROVIDER", "ONNX Runtime execution provider that ran"))
        self.addOutput(QgsProcessingOutputNumber("GSD_METRES", "Ground sample distance in metres"))
        self.addOutput(QgsProcessingOutputString("NOTES", "How the raster was converted to 8-bit RGB"))

    def add_extra_parameters(self) -> None:
        pass

    def output_label(self) -> str:
        return "Result"

    def grid_and_conditions(self, layer, parameters, context, feedback, notes):
        raise NotImplementedError

    def request_values(self, parameters, context) -> dict:
        """Request fields of this algorithm's own parameters (beyond the model parameters)."""
        return {}

    @guarded
    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        from ..gis.rasters import request_on_grid

        output = check_tif(self.parameterAsOutputLayer(parameters, OUTPUT, context))
        layer = self.parameterAsRasterLayer(parameters, INPUT, context)
        notes = []
        grid, conditions = self.grid_and_conditions(layer, parameters, context, feedback, notes)
        for note in notes:
            feedback.pushWarning(note)
        req = request_on_grid(grid, output, conditions=conditions, **model_values(self, parameters, context),
                              **self.request_values(parameters, context))
        result = run_engine(req, feedback)
        gsd_m = report(result, feedback)
        load_as_generated(context, result.path, result_name(self.label, req))
        return {OUTPUT: result.path, "PROVIDER": result.provider, "GSD_METRES": gsd_m, "NOTES": " ".join(notes)}


class InpaintAlgorithm(_RasterConditionAlgorithm):
    label = "Inpainted"

    def name(self) -> str:
        return "inpaint"

    def displayName(self) -> str:  # noqa: N802
        return tr("Inpaint raster")

    def tags(self):
        return ["inpainting", "mask", "fill", "remove", "synthetic", "diffusion"]

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Regenerates a raster only inside the polygons of a mask layer (or its selected features), on the "
                "raster's own grid and CRS. Pixels outside the polygons are copied unchanged (byte-identical to "
                "the raster's 8-bit RGB); inside, the fill is corrected to meet the surroundings (seamless) and "
                "blended in over a few pixels (feathered) so no edge shows at the border. Grow the mask by a few "
                "metres to take shadows and edges along. The mask layer may be in another CRS (it is "
                "reprojected).\n"
                "16-bit, float and single-band rasters are converted to 8-bit RGB first (logged).")

    def add_extra_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterVectorLayer(MASK, tr("Mask: polygons to regenerate"),
                                                            [QgsProcessing.SourceType.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterBoolean(SELECTED_ONLY, tr("Selected features only"), False))
        grow = QgsProcessingParameterNumber(GROW_M, tr("Grow the mask by (metres on the ground)"),
                                            QgsProcessingParameterNumber.Type.Double, 0.0, True, 0.0, 1000.0)
        grow.setHelp("Regenerate this far around the polygons too: the shadows and edges of what is removed go "
                     "with it, and a border on open ground blends best (a few metres for buildings).")
        self.addParameter(grow)
        self.addOutput(QgsProcessingOutputNumber("MASK_PIXELS", "Pixels regenerated"))

    def output_label(self) -> str:
        return "Inpainted image"

    def grid_and_conditions(self, layer, parameters, context, feedback, notes):
        from ..gis.rasters import mask_from_polygons, output_nodata, raster_grid, read_rgb_nodata
        from ..gis.rasterize import new_counts

        grid = raster_grid(layer)
        mask_layer = self.parameterAsVectorLayer(parameters, MASK, context)
        counts = new_counts()
        mask = mask_from_polygons(mask_layer, grid, self.parameterAsBoolean(parameters, SELECTED_ONLY, context),
                                  target=f"raster {layer.name()!r}", project=context.project(), counts=counts,
                                  grow_m=self.parameterAsDouble(parameters, GROW_M, context))
        if counts["repaired"] or counts["skipped_invalid"]:
            notes.append(f"Mask polygons: {counts['repaired']} invalid repaired, {counts['skipped_invalid']} "
                         "invalid skipped.")
        image, nodata, conv = read_rgb_nodata(layer)
        notes.extend(conv)
        feedback.pushInfo(f"Regenerating {int(mask.sum())} of {mask.size} pixels.")
        self._mask_pixels = int(mask.sum())
        return grid, Conditions(mask=mask, image=image, nodata=output_nodata(nodata, mask))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        out = super().processAlgorithm(parameters, context, feedback)
        out["MASK_PIXELS"] = self._mask_pixels
        return out


class SuperResolveAlgorithm(_RasterConditionAlgorithm):
    label = "Super-resolved"

    def name(self) -> str:
        return "superresolve"

    def displayName(self) -> str:  # noqa: N802
        return tr("Super-resolve raster (4x)")

    def tags(self):
        return ["super-resolution", "upscale", "sharpen", "synthetic", "diffusion"]

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Writes a GeoTIFF with pixels 4 times smaller than the raster's (a 10 m raster gives 2.5 m) on "
                "exactly the same footprint and CRS, generated with the raster as the model's low-resolution "
                "guide. The detail is synthetic: it is plausible, not measured. By default every 4 x 4 block of "
                "the result averages to the raster's pixel (guide consistency 1), so the result keeps the "
                "raster's colours and brightness; 0 lets the model read the raster only as a hint. Strength: "
                "below 1 the model starts from a smooth upscale of the raster partly noised, so the detail stays "
                f"nearer what the raster shows (the default {SR_STRENGTH_DEFAULT:g}); 1 draws all the detail "
                "anew from noise.\n"
                "The result has 16 times the pixels: large rasters exceed the pixel budget (plugin settings).")

    def add_extra_parameters(self) -> None:
        from qgis.core import QgsProcessingParameterDefinition

        p = QgsProcessingParameterNumber(GUIDE_CONSISTENCY, tr("Guide consistency (1 = keep the raster exactly, "
                                         "0 = a hint only)"), QgsProcessingParameterNumber.Type.Double,
                                         1.0, False, 0.0, 1.0)
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(p)
        s = QgsProcessingParameterNumber(STRENGTH, tr("Strength (lower = nearer a smooth upscale of the raster, 1 = "
                                         "detail drawn anew)"), QgsProcessingParameterNumber.Type.Double,
                                         SR_STRENGTH_DEFAULT, False, 0.05, 1.0)
        s.setFlags(s.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(s)

    def request_values(self, parameters, context) -> dict:
        return {"guide_consistency": self.parameterAsDouble(parameters, GUIDE_CONSISTENCY, context)}

    def output_label(self) -> str:
        return "Super-resolved image"

    def grid_and_conditions(self, layer, parameters, context, feedback, notes):
        from ..gis.rasters import SR_FACTOR, output_nodata, raster_grid, read_rgb_nodata, sr_grid

        grid = raster_grid(layer)
        guide, nodata, conv = read_rgb_nodata(layer)
        notes.extend(conv)
        return sr_grid(grid, SR_FACTOR), Conditions(guide=guide, nodata=output_nodata(nodata, factor=SR_FACTOR),
                                                    strength=self.parameterAsDouble(parameters, STRENGTH, context))


class VariationAlgorithm(_RasterConditionAlgorithm):
    label = "Variation"

    def name(self) -> str:
        return "variation"

    def displayName(self) -> str:  # noqa: N802
        return tr("Variation of a raster")

    def tags(self):
        return ["variation", "sdedit", "more like this", "synthetic", "diffusion"]

    def shortHelpString(self) -> str:  # noqa: N802
        return ("'More like this': a new image on the raster's own grid that starts from the raster partly noised "
                "(SDEdit). Strength 0.2 keeps it close to the raster, 1.0 ignores it.")

    def add_extra_parameters(self) -> None:
        Num = QgsProcessingParameterNumber
        self.addParameter(Num(STRENGTH, tr("Strength (0.05 = nearly the same, 1 = ignore the raster)"), Num.Type.Double,
                              0.5, False, 0.05, 1.0))

    def output_label(self) -> str:
        return "Variation"

    def grid_and_conditions(self, layer, parameters, context, feedback, notes):
        from ..gis.rasters import output_nodata, raster_grid, read_rgb_nodata

        grid = raster_grid(layer)
        image, nodata, conv = read_rgb_nodata(layer)
        notes.extend(conv)
        return grid, Conditions(image=image, strength=self.parameterAsDouble(parameters, STRENGTH, context),
                                nodata=output_nodata(nodata))
