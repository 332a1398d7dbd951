"""Layout condition from vector files for the batch runner (GDAL/OGR only, no QGIS).

Burned per block footprint (core.engine.blocks calls it with each block's grid), not per tile: the layout a block
sees is then a function of its place only, so tiles stay seamless and byte-reproducible with conditions too.
Sources are burned in spec order (a later one wins where they overlap), ALL_TOUCHED off (a pixel takes a class
when its centre is inside), lines and points need a `buffer` (CRS units of the job) to cover pixels. Pixels
no feature covers are background (0), as the dock's rasterizer does for the layers a user picks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..core.errors import ConditionError
from ..core.geo.georef import Grid


@dataclass(frozen=True)
class VectorLayout:
    sources: Tuple[Tuple[str, Optional[str], int, float], ...]  # (file, layer, class id, buffer)

    @classmethod
    def from_spec(cls, spec) -> "VectorLayout":
        vl = cls(tuple((s.file, s.layer, s.class_id, s.buffer) for s in spec.layout))
        for f, layer, _, _ in vl.sources:
            vl._layer(f, layer)  # fail early, naming the file
        return vl

    def to_dict(self) -> dict:
        return {"sources": [list(s) for s in self.sources]}

    @classmethod
    def from_dict(cls, d: dict) -> "VectorLayout":
        return cls(tuple(tuple(s) for s in d["sources"]))

    @staticmethod
    def _layer(path: str, layer: Optional[str]):
        from osgeo import ogr

        ogr.UseExceptions()
        try:
            ds = ogr.Open(path)
        except RuntimeError as err:
            raise ConditionError(f"layout: cannot open {path}: {err}") from err
        lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
        if lyr is None:
            raise ConditionError(f"layout: {path} has no layer {layer!r}.")
        return ds, lyr

    def __call__(self, grid: Grid) -> np.ndarray:
        from osgeo import gdal, ogr, osr

        gdal.UseExceptions()
        dst_srs = osr.SpatialReference()
        dst_srs.ImportFromWkt(grid.crs_wkt)
        dst_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        ras = gdal.GetDriverByName("MEM").Create("", grid.width, grid.height, 1, gdal.GDT_Byte)
        ras.SetGeoTransform(grid.transform)
        ras.SetProjection(grid.crs_wkt)
        ras.GetRasterBand(1).Fill(0)
        xmin, ymin, xmax, ymax = grid.bounds
        for path, layer, class_id, buffer in self.sources:
            ds, lyr = self._layer(path, layer)
            src_srs = lyr.GetSpatialRef()
            to_dst = from_dst = None
            if src_srs is not None and not src_srs.IsSame(dst_srs):
                src_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
                to_dst = osr.CoordinateTransformation(src_srs, dst_srs)
                from_dst = osr.CoordinateTransformation(dst_srs, src_srs)
            m = buffer + max(grid.pixel_size)
            box = ogr.CreateGeometryFromWkt(f"POLYGON(({xmin - m} {ymin - m},{xmax + m} {ymin - m},"
                                            f"{xmax + m} {ymax + m},{xmin - m} {ymax + m},{xmin - m} {ymin - m}))")
            if from_dst is not None:
                box.Segmentize((xmax - xmin) / 10.0)
                box.Transform(from_dst)
            lyr.SetSpatialFilter(box)
            mem = ogr.GetDriverByName("Memory").CreateDataSource("")
            ml = mem.CreateLayer("burn", dst_srs, ogr.wkbUnknown)
            defn = ml.GetLayerDefn()
            for feat in lyr:
                g = feat.GetGeometryRef()
                if g is None or g.IsEmpty():
                    continue
                g = g.Clone()
                if to_dst is not None:
                    g.Transform(to_dst)
                if buffer > 0:
                    g = g.Buffer(buffer)
                f = ogr.Feature(defn)
                f.SetGeometry(g)
                ml.CreateFeature(f)
            gdal.RasterizeLayer(ras, [1], ml, burn_values=[int(class_id)], options=["ALL_TOUCHED=FALSE"])
            lyr.SetSpatialFilter(None)
        return ras.GetRasterBand(1).ReadAsArray().astype(np.uint8)


__all__: List[str] = ["VectorLayout"]
