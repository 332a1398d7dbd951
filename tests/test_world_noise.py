"""World-anchored noise (core.engine.tiling.world_noise): a pure function of seed, stream and world pixel."""
import numpy as np

from rsgen_qgis.core.engine.tiling import world_noise


def test_same_place_same_noise_whatever_the_window():
    big = world_noise(7, -40, 100, 64, 80)
    part = world_noise(7, -10, 130, 20, 30)
    np.testing.assert_array_equal(big[:, 30:50, 30:60], part)
    assert not np.array_equal(world_noise(8, -10, 130, 20, 30), part)


def test_starting_noise_is_pinned():
    """Stream 0 is the starting noise every earlier version drew: a seed keeps giving the same image."""
    np.testing.assert_allclose(world_noise(7, 1000, -20, 2, 3)[:, 0, :2],
                               [[-0.015968825668096542, 0.682536244392395],
                                [0.3391142785549164, -0.3616042137145996],
                                [0.16003753244876862, -0.3050580322742462]], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(world_noise(7, 5, 5, 4, 4, stream=0), world_noise(7, 5, 5, 4, 4))


def test_streams_are_anchored_and_independent():
    """A stochastic sampler's step noise (stream k >= 1) is anchored like the starting noise and uncorrelated with
    it and with the other steps' noise."""
    s = [world_noise(3, 0, 0, 96, 96, stream=k) for k in range(4)]
    np.testing.assert_array_equal(world_noise(3, 20, 10, 30, 40, stream=2), s[2][:, 10:40, 20:60])
    for k in range(4):
        assert abs(s[k].mean()) < 0.03 and abs(s[k].std() - 1) < 0.03
        for j in range(k):
            assert abs(np.corrcoef(s[k].ravel(), s[j].ravel())[0, 1]) < 0.03
    # streams of one seed are not another seed's starting noise
    assert not np.array_equal(world_noise(3, 0, 0, 8, 8, stream=1), world_noise(4, 0, 0, 8, 8))
