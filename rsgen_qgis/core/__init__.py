"""The generation engine. Imports numpy, onnxruntime, rasterio and pyproj only: never qgis, never torch."""

VERSION = "0.4.0"
