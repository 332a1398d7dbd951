"""The dataset filter's geometry and decision (core, no QGIS)."""
import numpy as np
import pytest

from rsgen_qgis.core.conditions.segfilter import box_agreement, keep_sample, quad_mask


def test_quad_mask_pixel_centres():
    m = quad_mask([(1, 1), (4, 1), (4, 3), (1, 3)], 5, 6)  # cols 1..3, rows 1..2
    assert set(zip(*np.nonzero(m))) == {(r, c) for r in (1, 2) for c in (1, 2, 3)}
    diamond = quad_mask([(3, 0), (6, 3), (3, 6), (0, 3)], 6, 6)  # either winding order
    assert diamond[2, 2] and diamond[3, 3] and not diamond[0, 0] and not diamond[5, 5]
    assert np.array_equal(diamond, quad_mask([(0, 3), (3, 6), (6, 3), (3, 0)], 6, 6))


def test_agreement_and_decision():
    pred = np.zeros((8, 8), int)
    pred[0:4, 0:4] = 3
    boxes = [(3, [(0, 0), (4, 0), (4, 4), (0, 4)]), (3, [(2, 0), (6, 0), (6, 4), (2, 4)]),
             (3, [(4, 4), (8, 4), (8, 8), (4, 8)]), (3, [(20, 20), (22, 20), (22, 22), (20, 22)])]
    agreement = box_agreement(pred, boxes)
    assert agreement == pytest.approx([1.0, 0.5, 0.0, 1.0])  # the last one is outside: nothing contradicts it
    assert keep_sample(agreement, 0.5, 0.75) and not keep_sample(agreement, 0.6, 0.75)
    assert keep_sample([], 0.5, 1.0)
