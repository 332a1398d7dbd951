"""Layout conditions from vector layers, as Processing algorithms.

rsgen:generatelayout ("Generate from vector layers"): rsgen:generate plus a layout drawn from the chosen
vector layers by attribute rules (default OSM rules, or a rules JSON file) and, optionally, object boxes from a
point/polygon layer with a category field (drawn as filled rotated rectangles, AeroGen-style).
rsgen:previewlayout ("Preview layout"): the same class raster written as a paletted GeoTIFF, loaded with a legend
that names the classes, so the user sees what the model will be told before spending minutes on it.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from qgis.core import (QgsProcessing, QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingException,
                       QgsProcessingFeedback, QgsProcessingLayerPostProcessorInterface, QgsProcessingOutputString,
                       QgsProcessingParameterField, QgsProcessingParameterFile, QgsProcessingParameterMultipleLayers,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterVectorLayer)

from ..core.conditions.encoding import NO_LAYOUT
from ..core.geo.georef import Grid, grid_for_request
from ..core.request import Conditions, GenerationRequest
from .common import check_tif, given, guarded, tr
from .generate import OUTPUT, GenerateAlgorithm

LAYERS, RULES, BOXES, BOX_FIELD, BOX_SIZE = "LAYERS", "RULES", "BOXES", "BOX_FIELD", "BOX_SIZE"
RULES_HELP = ("Rules file: JSON, a list of rules {\"class\", \"field\", \"values\", \"geometry\", \"buffer_m\", "
              "\"priority\"} (see resources/osm_rules.json, the default OSM rules). Classes: background, road, "
              "major_road, building, vegetation, water.")


def add_layout_parameters(alg: QgsProcessingAlgorithm, boxes: bool = True) -> None:
    alg.addParameter(QgsProcessingParameterMultipleLayers(
        LAYERS, tr("Vector layers for the layout (roads, buildings, land use, water…)"),
        QgsProcessing.SourceType.TypeVectorAnyGeometry,
        optional=True))
    alg.addParameter(QgsProcessingParameterFile(
        RULES, tr("Layout rules file (JSON; default: the OSM rules)"), QgsProcessingParameterFile.Behavior.File, "json",
        optional=True, fileFilter="JSON (*.json)"))
    if boxes:
        add_box_parameters(alg, optional=True)


def add_box_parameters(alg: QgsProcessingAlgorithm, optional: bool) -> None:
    alg.addParameter(QgsProcessingParameterVectorLayer(
        BOXES, tr("Object boxes: point or polygon layer"),
        [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon],
        optional=optional))
    alg.addParameter(QgsProcessingParameterField(BOX_FIELD, tr("Category field of the boxes layer"), None, BOXES,
                                                 optional=optional))
    Num = QgsProcessingParameterNumber
    alg.addParameter(Num(BOX_SIZE, tr("Box size in metres for points without width_m/length_m fields"), Num.Type.Double,
                         None, True, 0.0))


def read_rules(alg: QgsProcessingAlgorithm, parameters: Dict[str, Any], context: QgsProcessingContext):
    from ..core.conditions.rules import DEFAULT_OSM_RULES, load_rules

    path = alg.parameterAsFile(parameters, RULES, context)
    return load_rules(path) if path else list(DEFAULT_OSM_RULES)


def box_options(alg, parameters: Dict[str, Any], context: QgsProcessingContext):
    """(layer or None, category field, default size or None)."""
    layer = alg.parameterAsVectorLayer(parameters, BOXES, context) if given(parameters, BOXES) else None
    fld = alg.parameterAsString(parameters, BOX_FIELD, context) if layer is not None else ""
    if layer is not None and not fld:
        raise QgsProcessingException(f"Choose the category field of the boxes layer {layer.name()!r} (BOX_FIELD).")
    size = alg.parameterAsDouble(parameters, BOX_SIZE, context) if given(parameters, BOX_SIZE) else None
    return layer, fld, (size if size else None)


def layout_for_grid(alg: QgsProcessingAlgorithm, parameters: Dict[str, Any], context: QgsProcessingContext,
                    feedback: QgsProcessingFeedback, grid: Grid) -> Tuple[np.ndarray, str]:
    """(layout class ids on `grid`, one-line summary) from the LAYERS/RULES/BOXES parameters."""
    from ..gis.boxes import boxes_from_layer, burn_boxes
    from ..gis.rasterize import layers_to_layout, stats_message

    layers = alg.parameterAsLayerList(parameters, LAYERS, context) if given(parameters, LAYERS) else []
    box_layer, box_field, box_size = box_options(alg, parameters, context) \
        if alg.parameterDefinition(BOXES) is not None else (None, "", None)
    if not layers and box_layer is None:
        raise QgsProcessingException("Choose vector layers for the layout (LAYERS), or an object boxes layer.")
    project = context.project()
    parts = []
    if layers:
        layout, stats = layers_to_layout(layers, read_rules(alg, parameters, context), grid, feedback, project)
        parts.append(stats_message(stats))
        for w in stats["warnings"]:
            feedback.pushWarning(w)
    else:  # boxes only: the rest of the image is "no information", not empty ground
        layout = np.full((grid.height, grid.width), NO_LAYOUT, np.uint8)
    if box_layer is not None:
        boxes, counts = boxes_from_layer(box_layer, box_field, grid, default_size_m=box_size, project=project)
        layout = burn_boxes(layout, boxes, grid)
        left = {k: v for k, v in counts.items() if v and k != "boxes"}
        parts.append(f"Boxes: {len(boxes)} drawn" + (" (" + ", ".join(f"{v} {k.replace('_', ' ')}"
                                                                      for k, v in left.items()) + ")" if left else ""))
    message = " ".join(parts)
    feedback.pushInfo(message)
    return layout, message


class LayoutGenerateAlgorithm(GenerateAlgorithm):
    """rsgen:generate + a layout condition drawn from vector layers (and object boxes)."""

    def name(self) -> str:
        return "generatelayout"

    def displayName(self) -> str:  # noqa: N802
        return tr("Generate from vector layers (layout)")

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Generates a synthetic satellite image whose layout follows your vector layers: each layer is "
                "rasterized onto the output grid (exact pixel alignment, no antialiasing, reprojected from its own "
                "CRS) by attribute rules: roads (highway=*, buffered by road class), buildings, green areas, water. "
                "Invalid polygons are repaired (or skipped) and counted in the log.\n\n" + RULES_HELP + "\n\n"
                "Object boxes (optional): a point or polygon layer with a category field; polygons give their "
                "minimum rotated rectangle, points a rectangle from width_m/length_m/angle fields (or the default "
                "box size). They are drawn into the layout as buildings.\n\n"
                + super().shortHelpString())

    def initAlgorithm(self, config: Optional[dict] = None) -> None:  # noqa: N802
        super().initAlgorithm(config)
        add_layout_parameters(self)
        self.addOutput(QgsProcessingOutputString("LAYOUT_SUMMARY", "What the layout holds"))

    def checkParameterValues(self, parameters: Dict[str, Any],  # noqa: N802
                             context: QgsProcessingContext) -> Tuple[bool, str]:
        if not given(parameters, LAYERS) and not given(parameters, BOXES):
            return False, "Choose vector layers for the layout (LAYERS), or an object boxes layer."
        return super().checkParameterValues(parameters, context)

    def with_conditions(self, req: GenerationRequest, parameters: Dict[str, Any], context: QgsProcessingContext,
                        feedback: QgsProcessingFeedback) -> GenerationRequest:
        layout, self._summary = layout_for_grid(self, parameters, context, feedback, grid_for_request(req))
        return req.replace(conditions=Conditions(layout=layout))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self._summary = ""
        out = super().processAlgorithm(parameters, context, feedback)
        out["LAYOUT_SUMMARY"] = self._summary
        return out


class _StyleAsLayout(QgsProcessingLayerPostProcessorInterface):
    """Gives the loaded class raster its named legend (main thread, after Processing loaded it)."""

    instance: Optional["_StyleAsLayout"] = None

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802
        from ..gis.rasterize import style_layout_layer

        style_layout_layer(layer)

    @classmethod
    def create(cls) -> "_StyleAsLayout":
        if cls.instance is None:
            cls.instance = cls()
        return cls.instance


class PreviewLayoutAlgorithm(GenerateAlgorithm):
    """The class raster alone (no model): what the layout condition will be, with a legend."""

    def name(self) -> str:
        return "previewlayout"

    def displayName(self) -> str:  # noqa: N802
        return tr("Preview layout")

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Writes the layout class raster that 'Generate from vector layers' would give the model, as a "
                "paletted GeoTIFF loaded with a legend (background, road, major_road, building, vegetation, water). "
                "No model runs.\n\n" + RULES_HELP)

    def initAlgorithm(self, config: Optional[dict] = None) -> None:  # noqa: N802
        self.add_area_parameters()
        add_layout_parameters(self)
        self.addParameter(QgsProcessingParameterRasterDestination(OUTPUT, tr("Layout classes")))
        self.addOutput(QgsProcessingOutputString("LAYOUT_SUMMARY", "What the layout holds"))

    def checkParameterValues(self, parameters: Dict[str, Any],  # noqa: N802
                             context: QgsProcessingContext) -> Tuple[bool, str]:
        if not given(parameters, LAYERS) and not given(parameters, BOXES):
            return False, "Choose vector layers for the layout (LAYERS), or an object boxes layer."
        return super().checkParameterValues(parameters, context)

    @guarded
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from ..gis.rasterize import write_layout

        output = check_tif(self.parameterAsOutputLayer(parameters, OUTPUT, context))
        grid = grid_for_request(self.request(parameters, context, output))
        layout, summary = layout_for_grid(self, parameters, context, feedback, grid)
        if feedback.isCanceled():
            raise QgsProcessingException("Cancelled; nothing was written.")
        path = write_layout(output, layout, grid)
        if context.willLoadLayerOnCompletion(path):
            details = context.layerToLoadOnCompletionDetails(path)
            details.name = "Layout preview"
            details.forceName = True
            details.setPostProcessor(_StyleAsLayout.create())
        return {OUTPUT: path, "LAYOUT_SUMMARY": summary}
