"""rsgen:dataset, "Generate dataset": N synthetic images with object boxes, exported as training data.

Extents are either N random squares inside an area of interest (snapped to whole pixels, each holding at least
MIN_BOXES objects) or the features of an extents layer (each feature's bounding box). Each image is generated with
a layout made of the vector layers (optional) and the boxes (filled rotated rectangles), then the boxes are
exported three ways: COCO (horizontal boxes, pixel coordinates, one JSON for the dataset), DOTA v1 (rotated boxes,
pixel corners, one text file per image) and GeoJSON (rotated boxes in map coordinates, one file for the dataset).
An optional filter drops samples whose boxes a segmentation net does not confirm (core.conditions.segfilter).

Nothing half-made is left behind: on an error or cancel the images written by this run are removed, and the label
files are written (atomically) only at the end.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCsException, QgsProcessing,
                       QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback,
                       QgsProcessingOutputFile, QgsProcessingOutputNumber, QgsProcessingOutputString,
                       QgsProcessingParameterBoolean, QgsProcessingParameterCrs, QgsProcessingParameterExtent,
                       QgsProcessingParameterFile, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterNumber, QgsProcessingParameterVectorLayer)

from ..core.conditions.encoding import LAYOUT_CLASSES, NO_LAYOUT
from ..core.geo.georef import Grid, grid_for_request
from ..core.request import Conditions, GenerationRequest
from .common import RsgenAlgorithm, add_model_parameters, given, guarded, model_values, run_engine, tr
from .layout import (BOX_FIELD, BOXES, LAYERS, RULES_HELP, add_box_parameters, add_layout_parameters, box_options,
                     read_rules)

AOI, EXTENTS, COUNT, TARGET_CRS, GSD, SIZE, MIN_BOXES = "AOI", "EXTENTS", "COUNT", "TARGET_CRS", "GSD", "SIZE", "MIN_BOXES"
FILTER, SEGNET, KEEP_FRACTION, OUTPUT_FOLDER = "FILTER", "SEGNET", "KEEP_FRACTION", "OUTPUT_FOLDER"
TRIES_PER_SAMPLE = 50
BOX_FRACTION = 0.5  # share of a box's pixels the net must give the box's class for the box to count as confirmed


class GenerateDatasetAlgorithm(RsgenAlgorithm):
    def name(self) -> str:
        return "dataset"

    def displayName(self) -> str:  # noqa: N802
        return tr("Generate dataset (images + COCO/DOTA/GeoJSON boxes)")

    def tags(self) -> List[str]:
        return ["dataset", "training", "detection", "coco", "dota", "boxes", "aerogen", "synthetic"]

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Generates N synthetic images over random extents inside an area of interest (AOI, COUNT) or over "
                "the features of an extents layer (EXTENTS), each conditioned on the object boxes of a point or "
                "polygon layer with a category field (drawn as filled rotated rectangles) and, optionally, a layout "
                "from vector layers. Writes to the output folder: images/*.tif (georeferenced), coco.json "
                "(horizontal boxes, pixels), dota/*.txt (rotated boxes, pixel corners, DOTA v1), boxes.geojson "
                "(rotated boxes, map coordinates) and summary.json.\n"
                "Filter (optional): drops samples whose boxes a segmentation net does not confirm (half of a box's "
                "pixels predicted as its class; KEEP_FRACTION of the boxes confirmed). The net comes from the model "
                "package (graphs.segmenter) or SEGNET; without one the filter reports that it is unavailable and "
                "keeps every sample.\nImage i uses seed SEED + i.\n\n" + RULES_HELP)

    def initAlgorithm(self, config: Optional[dict] = None) -> None:  # noqa: N802
        Num = QgsProcessingParameterNumber
        self.addParameter(QgsProcessingParameterExtent(AOI, tr("Area of interest (random extents)"), optional=True))
        self.addParameter(Num(COUNT, tr("Number of random extents"), Num.Type.Integer, 10, False, 1, 100000))
        self.addParameter(QgsProcessingParameterVectorLayer(
            EXTENTS, tr("Listed extents: polygon layer (one image per feature's bounding box)"),
            [QgsProcessing.SourceType.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterCrs(TARGET_CRS, tr("Output CRS (default: the AOI's or extents' CRS)"),
                                                    optional=True))
        self.addParameter(Num(GSD, tr("Pixel size (GSD) in the output CRS's units"), Num.Type.Double, None, False, 0.0))
        self.addParameter(Num(SIZE, tr("Image size in pixels (random extents)"), Num.Type.Integer, 256, False, 8, 4096))
        add_box_parameters(self, optional=False)
        self.addParameter(Num(MIN_BOXES, tr("Minimum boxes per image"), Num.Type.Integer, 1, False, 0))
        add_layout_parameters(self, boxes=False)
        add_model_parameters(self)
        self.addParameter(QgsProcessingParameterBoolean(
            FILTER, tr("Drop samples the segmentation net does not confirm"), False))
        self.addParameter(QgsProcessingParameterFile(
            SEGNET, tr("Segmentation net (ONNX; default: the model package's)"),
            QgsProcessingParameterFile.Behavior.File, "onnx", optional=True, fileFilter="ONNX (*.onnx)"))
        self.addParameter(Num(KEEP_FRACTION, tr("Filter: share of a sample's boxes that must be confirmed"),
                              Num.Type.Double, 0.5, False, 0.0, 1.0))
        self.addParameter(QgsProcessingParameterFolderDestination(OUTPUT_FOLDER, tr("Dataset folder")))
        self.addOutput(QgsProcessingOutputNumber("GENERATED", "Images generated"))
        self.addOutput(QgsProcessingOutputNumber("KEPT", "Images kept"))
        self.addOutput(QgsProcessingOutputString("FILTER_STATUS", "What the filter did"))
        self.addOutput(QgsProcessingOutputFile("COCO", "COCO annotations"))
        self.addOutput(QgsProcessingOutputFile("GEOJSON", "Georeferenced boxes"))

    def checkParameterValues(self, parameters, context) -> Tuple[bool, str]:  # noqa: N802
        if given(parameters, AOI) == given(parameters, EXTENTS):
            return False, "Give either an area of interest (AOI) for random extents, or an extents layer, not both."
        return super().checkParameterValues(parameters, context)

    # -- extents -----------------------------------------------------------------------------------------------
    def _crs(self, parameters, context) -> QgsCoordinateReferenceSystem:
        if given(parameters, TARGET_CRS):
            crs = self.parameterAsCrs(parameters, TARGET_CRS, context)
            if crs.isValid():
                return crs
        if given(parameters, AOI):
            crs = self.parameterAsExtentCrs(parameters, AOI, context)
        else:
            layer = self.parameterAsVectorLayer(parameters, EXTENTS, context)
            crs = layer.crs() if layer is not None else QgsCoordinateReferenceSystem()
        if not crs.isValid() and context.project() is not None:
            crs = context.project().crs()
        if not crs.isValid():
            raise QgsProcessingException("The output CRS is unknown: set TARGET_CRS.")
        return crs

    def _listed_grids(self, parameters, context, crs, wkt, gsd, budget) -> List[Grid]:
        layer = self.parameterAsVectorLayer(parameters, EXTENTS, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException("The extents layer is not a valid polygon layer.")
        if layer.featureCount() == 0:
            raise QgsProcessingException(f"The extents layer {layer.name()!r} is empty.")
        xform = QgsCoordinateTransform(layer.crs(), crs, context.transformContext()) if layer.crs() != crs else None
        grids = []
        for f in layer.getFeatures():
            g = f.geometry()
            if g is None or g.isNull() or g.isEmpty():
                continue
            rect = g.boundingBox()
            if xform is not None:
                try:
                    rect = xform.transformBoundingBox(rect)
                except QgsCsException as exc:
                    raise QgsProcessingException(f"Extent feature {f.id()} cannot be projected to the output CRS: "
                                                 f"{exc}") from exc
            req = GenerationRequest(extent=(rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()),
                                    crs=wkt, output="", gsd=gsd, pixel_budget=budget)
            grids.append(grid_for_request(req))
        if not grids:
            raise QgsProcessingException(f"The extents layer {layer.name()!r} has no feature with a geometry.")
        return grids

    @staticmethod
    def _random_grid(rng, rect, wkt, gsd, size) -> Grid:
        c0, c1 = math.ceil(rect.xMinimum() / gsd - 1e-9), math.floor(rect.xMaximum() / gsd + 1e-9) - size
        r0, r1 = math.ceil(rect.yMinimum() / gsd - 1e-9) + size, math.floor(rect.yMaximum() / gsd + 1e-9)
        if c1 < c0 or r1 < r0:
            raise QgsProcessingException(
                f"The area of interest ({rect.width():.6g} x {rect.height():.6g}) is smaller than one image "
                f"({size} px x {gsd:g} = {size * gsd:.6g} CRS units a side); enlarge it, or use a smaller SIZE/GSD.")
        col, row = int(rng.integers(c0, c1 + 1)), int(rng.integers(r0, r1 + 1))
        return Grid(wkt, (col * gsd, gsd, 0.0, row * gsd, 0.0, -gsd), size, size)

    # -- run -----------------------------------------------------------------------------------------------------
    @guarded
    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        from .. import settings
        from ..gis.rasterize import layers_to_layout

        folder = self.parameterAsString(parameters, OUTPUT_FOLDER, context)
        crs = self._crs(parameters, context)
        wkt = crs.toWkt(QgsCoordinateReferenceSystem.WktVariant.WKT2_2019)
        gsd = self.parameterAsDouble(parameters, GSD, context)
        if not gsd > 0:
            raise QgsProcessingException("The pixel size (GSD) must be positive.")
        size = self.parameterAsInt(parameters, SIZE, context)
        budget = settings.pixel_budget()
        box_layer, box_field, box_size = box_options(self, parameters, context)
        if box_layer is None:
            raise QgsProcessingException("Choose the object boxes layer (BOXES) and its category field.")
        if box_layer.featureCount() == 0:
            raise QgsProcessingException(f"The boxes layer {box_layer.name()!r} is empty: there is nothing to label.")
        layers = self.parameterAsLayerList(parameters, LAYERS, context) if given(parameters, LAYERS) else []
        rules = read_rules(self, parameters, context) if layers else None
        min_boxes = self.parameterAsInt(parameters, MIN_BOXES, context)
        params = model_values(self, parameters, context)
        seed0 = params.pop("seed")
        segnet, filter_status = self._segnet(parameters, context, params["model"], feedback)

        if given(parameters, AOI):
            count = self.parameterAsInt(parameters, COUNT, context)
            rect = self.parameterAsExtent(parameters, AOI, context, crs)
            rng = np.random.default_rng(seed0)
            listed = None
        else:
            listed = self._listed_grids(parameters, context, crs, wkt, gsd, budget)
            count, rect, rng = len(listed), None, None

        images_dir, dota_dir = os.path.join(folder, "images"), os.path.join(folder, "dota")
        os.makedirs(images_dir, exist_ok=True)
        os.makedirs(dota_dir, exist_ok=True)
        written: List[str] = []
        samples: List[Tuple[str, Grid, list]] = []
        dropped: List[Dict[str, Any]] = []
        skipped = 0
        try:
            for i in range(count):
                if feedback.isCanceled():
                    raise QgsProcessingException("Cancelled; the images of this run were removed.")
                grid, boxes = self._sample_grid(i, listed, rng, rect, wkt, gsd, size, box_layer, box_field, box_size,
                                                min_boxes, context)
                if grid is None:
                    skipped += 1
                    feedback.pushWarning(f"Extent {i + 1} holds fewer than {min_boxes} boxes; skipped.")
                    continue
                layout = self._layout(layers, rules, grid, boxes, feedback, context, layers_to_layout)
                name = f"sample_{i + 1:04d}"
                out = os.path.join(images_dir, name + ".tif")
                req = GenerationRequest(extent=grid.bounds, crs=wkt, output=out, width=grid.width, height=grid.height,
                                        seed=seed0 + i, conditions=Conditions(layout=layout), **params)
                feedback.setProgressText(f"Image {i + 1}/{count}")
                result = run_engine(req, feedback, (i / count, (i + 1) / count), log=(i == 0))
                written.append(result.path)
                if segnet is not None:
                    agreement = self._agreement(segnet, result.path, boxes, grid)
                    from ..core.conditions.segfilter import keep_sample

                    keep_frac = self.parameterAsDouble(parameters, KEEP_FRACTION, context)
                    if not keep_sample(agreement, BOX_FRACTION, keep_frac):
                        dropped.append({"image": f"images/{name}.tif", "agreement": [round(a, 3) for a in agreement]})
                        os.remove(result.path)
                        written.remove(result.path)
                        continue
                samples.append((name, grid, boxes))
            if not samples:
                detail = ""
                if dropped:
                    shares = [sum(a >= BOX_FRACTION for a in d["agreement"]) / max(1, len(d["agreement"]))
                              for d in dropped]
                    detail = (f": the filter dropped all {len(dropped)} (share of boxes confirmed per sample: "
                              + ", ".join(f"{v:.2f}" for v in shares) + "; lower KEEP_FRACTION, or use a "
                              "segmentation net that suits the imagery)")
                raise QgsProcessingException(f"No sample was kept{detail}.")
            paths = self._write_labels(folder, samples, dropped, filter_status, skipped, count)
        except BaseException:
            for p in written:
                if os.path.exists(p):
                    os.remove(p)
            raise
        generated = len(samples) + len(dropped)
        if segnet is not None:
            filter_status = f"kept {len(samples)} of {generated} (segmentation net {os.path.basename(segnet.path)})"
        feedback.pushInfo(f"Dataset in {folder}: {len(samples)} images kept of {generated} generated; "
                          f"filter: {filter_status}.")
        return {OUTPUT_FOLDER: folder, "GENERATED": generated, "KEPT": len(samples), "FILTER_STATUS": filter_status,
                "COCO": paths["coco"], "GEOJSON": paths["geojson"]}

    def _segnet(self, parameters, context, model_id, feedback):
        """(SegNet or None, status text) for the FILTER option."""
        if not self.parameterAsBoolean(parameters, FILTER, context):
            return None, "off"
        from .. import settings
        from ..core.runtime.models import find
        from ..core.conditions.segfilter import SegNet, package_segmenter

        path = self.parameterAsFile(parameters, SEGNET, context) if given(parameters, SEGNET) else ""
        if not path:
            path = package_segmenter(find(model_id, settings.model_dirs())) or ""
        if not path:
            status = (f"unavailable: model package {model_id!r} has no segmentation net (graphs.segmenter) and no "
                      "SEGNET file was given; no sample was dropped")
            feedback.pushWarning(f"The box filter is {status}.")
            return None, status
        net = SegNet(path, LAYOUT_CLASSES)
        feedback.pushInfo(f"Filtering samples with the segmentation net {path}.")
        return net, "on"

    def _sample_grid(self, i, listed, rng, rect, wkt, gsd, size, box_layer, box_field, box_size, min_boxes, context):
        from ..gis.boxes import boxes_from_layer

        tries = 1 if listed is not None else TRIES_PER_SAMPLE
        for _ in range(tries):
            grid = listed[i] if listed is not None else self._random_grid(rng, rect, wkt, gsd, size)
            boxes, _ = boxes_from_layer(box_layer, box_field, grid, default_size_m=box_size,
                                        project=context.project())
            boxes = [b for b in boxes if _reaches_in(b, grid)]
            if len(boxes) >= min_boxes:
                return grid, boxes
        if listed is None:
            raise QgsProcessingException(
                f"No random extent of the area of interest held {min_boxes} boxes in {TRIES_PER_SAMPLE} tries; "
                "choose an area where the boxes layer has objects, or lower MIN_BOXES.")
        return None, []

    @staticmethod
    def _layout(layers, rules, grid, boxes, feedback, context, layers_to_layout):
        from ..gis.boxes import burn_boxes

        if layers:
            base, _ = layers_to_layout(layers, rules, grid, feedback, context.project())
        else:
            base = np.full((grid.height, grid.width), NO_LAYOUT, np.uint8)
        return burn_boxes(base, boxes, grid)

    @staticmethod
    def _agreement(segnet, path, boxes, grid):
        from osgeo import gdal

        from ..core.conditions.segfilter import box_agreement
        from ..gis.boxes import class_of

        rgb = gdal.Open(path).ReadAsArray()[:3]
        pred = segnet.predict(rgb)
        return box_agreement(pred, [(LAYOUT_CLASSES.index(class_of(b.category, None)), b.to_pixels(grid).corners)
                                    for b in boxes])

    @staticmethod
    def _write_labels(folder, samples, dropped, filter_status, skipped, count) -> Dict[str, str]:
        from ..gis.boxes import coco_dataset, dota_text, geojson, write_json, write_text

        for name, grid, boxes in samples:
            write_text(os.path.join(folder, "dota", name + ".txt"), dota_text(boxes, grid))
        coco = coco_dataset([(f"images/{n}.tif", g, b) for n, g, b in samples])
        feats, crs = [], None
        for name, grid, boxes in samples:
            gj = geojson(boxes, grid, image=f"images/{name}.tif")
            feats.extend(gj["features"])
            crs = gj.get("crs", crs)
        collection = {"type": "FeatureCollection", "features": feats, **({"crs": crs} if crs else {})}
        paths = {"coco": write_json(os.path.join(folder, "coco.json"), coco),
                 "geojson": write_json(os.path.join(folder, "boxes.geojson"), collection)}
        write_json(os.path.join(folder, "summary.json"),
                   {"requested": count, "skipped_few_boxes": skipped, "generated": len(samples) + len(dropped),
                    "kept": len(samples), "filter": filter_status, "dropped": dropped,
                    "images": [f"images/{n}.tif" for n, _, _ in samples]})
        return paths


def _reaches_in(box, grid: Grid) -> bool:
    x0, y0, x1, y1 = box.to_pixels(grid).hbb()
    return x1 > 0 and y1 > 0 and x0 < grid.width and y0 < grid.height
