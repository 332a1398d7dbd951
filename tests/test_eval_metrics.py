"""The evaluation's own measures (make eval), checked on inputs with known answers."""
import numpy as np
import pytest

ev = pytest.importorskip("rsgen_qgis.training.evaluate")


def test_frechet_zero_for_same_set_and_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 4))
    assert ev.frechet(a, a) == pytest.approx(0.0, abs=1e-8)
    b = rng.normal(size=(4000, 4)) * 2.0 + 1.0  # N(1, 4 I) vs N(0, I): 4 * (1 + 1 + 4 - 2 * 2) = 8
    assert ev.frechet(a, b) == pytest.approx(8.0, rel=0.08)


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(500, 8)), rng.normal(size=(500, 8))
    assert abs(ev.kid(a, b)) < 0.05
    assert ev.kid(a, b + 1.0) > 0.5


def test_miou_psnr_ssim():
    gt = np.array([[0, 0, 1, 1]] * 4)
    assert ev.miou(gt, gt, 2) == 1.0
    pred = np.array([[0, 1, 1, 1]] * 4)  # class 0: 4/8, class 1: 8/12
    assert ev.miou(pred, gt, 2) == pytest.approx((0.5 + 2 / 3) / 2)
    img = np.random.default_rng(2).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    assert ev.psnr(img, img) > 100 and ev.ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img.astype(int) + 20, 0, 255).astype(np.uint8)
    assert 15 < ev.psnr(noisy, img) < 30 and ev.ssim(noisy, img) < 1.0


def test_wilson_interval():
    lo, hi = ev.wilson(151, 600)  # 25.2 % of 600: about +- 3.5 points
    assert lo == pytest.approx(0.218, abs=0.002) and hi == pytest.approx(0.288, abs=0.002)
    lo, hi = ev.wilson(0, 20)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.15 < hi < 0.17


def test_hole_figures():
    """A fill equal to the scene: no colour shift, its border ratio equals the scene's own; a fill 40 grey levels
    too bright: shift 40 and a border that is an edge."""
    rng = np.random.default_rng(3)
    real = rng.integers(60, 190, (5, 3, 64, 64)).astype(np.uint8)
    same = ev.hole_figures(real.copy(), real, (16, 48))
    assert same["colour_shift_hole"] == 0 and same["psnr_hole"] > 100
    assert same["border_step_ratio"] == same["border_step_ratio_real"] == pytest.approx(1.0, abs=0.1)
    bright = real.copy()
    bright[:, :, 16:48, 16:48] += 40
    f = ev.hole_figures(bright, real, (16, 48))
    assert f["colour_shift_hole"] == pytest.approx(40.0) and f["border_step_ratio"] > 2
    assert f["images"] == 5 and f["hole_px"] == 32


def test_step_budget_is_exact():
    go = ev._budget(minutes=100.0, steps=3)
    assert [go(i) for i in range(5)] == [True, True, True, False, False]


def test_judges_with_a_fixed_step_budget_are_cached(tmp_path):
    import torch

    from rsgen_qgis.training.evaluate import cached_net

    calls = []

    def build():
        calls.append(1)
        net = torch.nn.Linear(3, 2)
        net.trained_steps = 7
        return net

    a = cached_net(str(tmp_path), "clf", 7, "10x3", build)
    b = cached_net(str(tmp_path), "clf", 7, "10x3", build)
    assert len(calls) == 1 and b.trained_steps == 7
    assert torch.equal(a.weight, b.weight)
    cached_net(str(tmp_path), "clf", 8, "10x3", build)   # another budget: trained again
    cached_net(str(tmp_path), "clf", 0, "10x3", build)   # wall-clock budget: never cached
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["judge_clf_7steps_10x3.pt", "judge_clf_8steps_10x3.pt"]
