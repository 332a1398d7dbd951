"""Putting a generated GeoTIFF on the map: one "Generated" group at the top, layers named from the prompt.

Runs on the main thread only (from QgsTask.finished or the dock), never from a worker: QGIS's project and
layer tree are not thread-safe.
"""
from __future__ import annotations

from typing import Optional

from qgis.core import QgsLayerTreeGroup, QgsProject, QgsRasterLayer

from ..core.errors import OutputError

GROUP_NAME = "Generated"
_NAME_CHARS = 48


def layer_name(prompt: str, seed: Optional[int] = None) -> str:
    """A short, readable name: the prompt's first words (one line), then the seed to tell variants apart."""
    text = " ".join(str(prompt or "").split())
    if len(text) > _NAME_CHARS:
        text = text[:_NAME_CHARS].rsplit(" ", 1)[0].rstrip(",.;:") + "…"
    text = text or "Generated image"
    return f"{text} (seed {seed})" if seed is not None else text


def generated_group(project: Optional[QgsProject] = None) -> QgsLayerTreeGroup:
    """The top-level "Generated" group, created at the top of the layer tree when missing."""
    root = (project or QgsProject.instance()).layerTreeRoot()
    group = root.findGroup(GROUP_NAME)
    if group is None:
        group = root.insertGroup(0, GROUP_NAME)
    return group


def add_result_layer(path: str, name: str, project: Optional[QgsProject] = None) -> QgsRasterLayer:
    """Load the GeoTIFF and insert it first in the "Generated" group (newest on top, drawn above older ones)."""
    project = project or QgsProject.instance()
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        raise OutputError(f"The generated file {path} was written but QGIS cannot open it as a raster.")
    project.addMapLayer(layer, False)
    generated_group(project).insertLayer(0, layer)
    return layer


def move_to_generated_group(layer: QgsRasterLayer, project: Optional[QgsProject] = None) -> None:
    """Move a layer that Processing already added to the tree into the "Generated" group (top)."""
    project = project or QgsProject.instance()
    root = project.layerTreeRoot()
    node = root.findLayer(layer.id())
    if node is None:
        return
    group = generated_group(project)
    parent = node.parent()
    if parent is group:
        return
    group.insertChildNode(0, node.clone())
    if parent is not None:
        parent.removeChildNode(node)
