"""DiffusionSat's 7-value metadata encoding, against values computed by hand."""
import numpy as np
import pytest

from rsgen_qgis.core.conditions import diffusionsat
from rsgen_qgis.core.errors import ConditionError


def test_encoding_by_hand():
    # New York, 0.5 m, 20 % cloud, 14 July 2019:
    # (-73.9857 + 180) * 1000/360 = 106.0143 * 2.77777... = 294.48416...
    # (40.7484 + 90) * 1000/180 = 130.7484 * 5.5555... = 726.38
    # 0.5 * 1000 = 500; 20/100 * 1000 = 200; (2019 - 1980) * 1000/120 = 325; 7 * 1000/12 = 583.333...;
    # 14 * 1000/31 = 451.6129...
    v = diffusionsat.encode(-73.9857, 40.7484, 0.5, 20.0, "2019-07-14")
    want = [294.4841667, 726.38, 500.0, 200.0, 325.0, 583.3333333, 451.6129032]
    assert v.dtype == np.float32 and v.shape == (7,)
    np.testing.assert_allclose(v, want, rtol=1e-6)
    # the extremes: lon -180 -> 0, lon 180 -> 1000, lat 90 -> 1000, year 2100 -> 1000, December 31st
    v = diffusionsat.encode(180.0, 90.0, 10.0, 100.0, "2100-12-31")
    np.testing.assert_allclose(v, [1000, 1000, 10000, 1000, 1000, 1000, 1000], rtol=1e-6)
    assert diffusionsat.encode(-180.0, -90.0, 1.0, 0.0, "1980-01-01")[[0, 1, 3, 4]].tolist() == [0, 0, 0, 0]


def test_manifest_block_and_request():
    b = diffusionsat.manifest_block({"cloud": 5.0})
    assert b["fields"] == ["lon", "lat", "gsd", "cloud", "year", "month", "day"]
    assert b["scale"] == pytest.approx([1000 / 360, 1000 / 180, 1000, 1000, 1000 / 120, 1000 / 12, 1000 / 31])
    warnings = []
    v = diffusionsat.from_manifest(b, 10.0, 20.0, 2.0, "2000-06-15", warnings)
    np.testing.assert_allclose(v, [190 * 1000 / 360, 110 * 1000 / 180, 2000, 50, 20 * 1000 / 120, 500,
                                   15 * 1000 / 31], rtol=1e-6)
    assert "5%" in warnings[0]
    with pytest.raises(ConditionError, match="date"):
        diffusionsat.from_manifest(b, 10.0, 20.0, 2.0, None, [])
    warnings = []
    d = diffusionsat.from_manifest(diffusionsat.manifest_block({"cloud": 5.0, "date": "2000-06-15"}), 10.0, 20.0, 2.0, None,
                                   warnings)
    np.testing.assert_array_equal(d, v)
    assert any("2000-06-15" in w for w in warnings)


def test_bad_default_date():
    with pytest.raises(ConditionError, match="ISO date"):
        diffusionsat.manifest_block({"date": "15/06/2000"})


@pytest.mark.parametrize("args, msg", [((200.0, 0.0, 1.0, 0.0, "2000-01-01"), "Longitude"),
                                       ((0.0, 0.0, -1.0, 0.0, "2000-01-01"), "GSD"),
                                       ((0.0, 0.0, 1.0, 120.0, "2000-01-01"), "Cloud"),
                                       ((0.0, 0.0, 1.0, 0.0, "July 2000"), "ISO date")])
def test_bad_values(args, msg):
    with pytest.raises(ConditionError, match=msg):
        diffusionsat.encode(*args)
