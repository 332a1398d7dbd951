"""A copy of a GeoTIFF with the same pixels and georeferencing but none of our tags (not an rsgen output)."""
import rasterio


def untagged_copy(src: str, dst: str) -> str:
    with rasterio.open(src) as s:
        profile, data = s.profile, s.read()
    with rasterio.open(dst, "w", **{**profile, "driver": "GTiff"}) as d:
        d.write(data)
    return dst
