"""core.windowed: the parts a raster window over the pixel budget is cut into (no QGIS needed)."""
import numpy as np
import pytest

from rsgen_qgis.core.request import Conditions, GenerationRequest
from rsgen_qgis.core.windowed import in_parts, plan


@pytest.mark.parametrize("h, w, budget, tile", [(3039, 1098, 1024 * 1024, 64), (48, 64, 1024, 32),
                                                (5000, 7000, 1024 * 1024, 64), (100, 100, 1024 * 1024, 64),
                                                (70, 4000, 4096, 64)])
def test_parts_cover_the_window_within_the_budget(h, w, budget, tile):
    parts, overlap = plan(h, w, budget, tile)
    covered = np.zeros((h, w), int)
    for r, c, ph, pw in parts:
        assert ph * pw <= max(budget, tile * tile) and r + ph <= h and c + pw <= w
        covered[r:r + ph, c:c + pw] += 1
    assert covered.min() >= 1
    if len(parts) > 1:
        assert 1 <= overlap <= tile


def test_the_orthophoto_takes_four_parts_not_eight():
    parts, _ = plan(3039, 1098, 1024 * 1024, 64)
    assert len(parts) == 4 and sum(p[2] * p[3] for p in parts) < 1.15 * 3039 * 1098


def test_only_image_requests_with_large_area_go_in_parts():
    img = np.zeros((3, 4, 4), np.uint8)
    base = dict(extent=(0, 0, 4, 4), crs="EPSG:32734", output="x.tif", width=4, height=4)
    assert in_parts(GenerationRequest(**base, large_area=True, conditions=Conditions(image=img)))
    assert not in_parts(GenerationRequest(**base, conditions=Conditions(image=img)))
    assert not in_parts(GenerationRequest(**base, large_area=True, conditions=Conditions(guide=img)))
    assert not in_parts(GenerationRequest(**base, large_area=True))
