"""Growing an inpainting mask by a ground distance (core.conditions.masks)."""
import math

import numpy as np

from rsgen_qgis.core.conditions.masks import grow


def test_a_point_grows_into_a_disc_or_an_ellipse():
    m = np.zeros((101, 121), bool)
    m[50, 60] = True
    for r in (2.0, 7.0, 20.0):  # 20 px is reached in steps (Minkowski sums)
        g = grow(m, r, r)
        ys, xs = np.nonzero(g)
        assert ys.min() == 50 - int(r) and ys.max() == 50 + int(r) and xs.min() == 60 - int(r)
        assert abs(g.sum() - math.pi * r * r) / (math.pi * r * r) < 0.15
        d2 = (ys - 50) ** 2 + (xs - 60) ** 2
        assert d2.max() <= (r + 1.5) ** 2  # nothing beyond the disc
    e = grow(m, 10.0, 4.0)  # pixels twice as tall on the ground as wide: fewer rows
    ys, xs = np.nonzero(e)
    assert (xs.max() - xs.min(), ys.max() - ys.min()) == (20, 8)


def test_small_radius_and_empty_mask_and_edges():
    m = np.zeros((20, 20), bool)
    m[0, 0] = True  # at the corner: no wrap-around
    assert np.array_equal(grow(m, 0.4, 0.4), m) and grow(m, 0.4, 0.4) is not m
    g = grow(m, 2, 2)
    assert g[0:3, 0:3].sum() == 6 and not g[-1].any() and not g[:, -1].any()
    assert not grow(np.zeros((5, 5), bool), 3, 3).any()
    assert grow(m, 2, 2)[m].all()  # the mask itself stays masked
