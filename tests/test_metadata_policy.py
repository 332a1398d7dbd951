"""The GSD warning at the edge of a model's training range: 4 m asked for in UTM is 4.0016 ellipsoidal metres, and a
user who picks the range's own edge is not warned; a GSD clearly outside still is."""
import pytest

from rsgen_qgis.core.engine.prepare import GSD_EDGE_SLACK, metadata_for
from rsgen_qgis.core.geo.georef import grid_for_request, gsd_metres_mean
from rsgen_qgis.core.request import GenerationRequest

MANIFEST = {"conditions": {"metadata_coverage": {"gsd": {"range": [1.17, 4.0], "outside": "warn"}}}}


def _warnings(gsd):
    req = GenerationRequest(extent=(453000, 6233600, 453000 + 64 * gsd, 6233600 + 64 * gsd), crs="EPSG:32734",
                            gsd=gsd, output="x.tif")
    grid = grid_for_request(req)
    warnings = []
    meta = metadata_for(grid, req, MANIFEST, warnings)
    return meta, warnings, gsd_metres_mean(grid)


@pytest.mark.parametrize("gsd", [4.0, 1.17, 2.0])
def test_a_gsd_at_or_inside_the_range_is_not_warned(gsd):
    meta, warnings, metres = _warnings(gsd)
    assert warnings == [] and meta["gsd_m"] == metres
    if gsd == 4.0:
        assert metres > 4.0  # the reason for the slack: UTM's scale factor makes it 4.0016 here


@pytest.mark.parametrize("gsd", [4.2, 1.1, 10.0])
def test_a_gsd_clearly_outside_is_warned(gsd):
    _, warnings, metres = _warnings(gsd)
    assert len(warnings) == 1 and "outside the model's training range 1.17-4.0" in warnings[0]
    assert not 1.17 * (1 - GSD_EDGE_SLACK) <= metres <= 4.0 * (1 + GSD_EDGE_SLACK)
