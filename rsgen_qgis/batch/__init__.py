"""Batch runner: `python -m rsgen_qgis batch JOB.yaml` (job spec, tile grid, COGs + VRT + manifest, Dask)."""
