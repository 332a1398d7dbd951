"""Georeferencing: the output grid (extent, CRS, pixel size, world anchoring), ground metadata, and writing
Cloud Optimized GeoTIFFs atomically with their provenance tags."""
