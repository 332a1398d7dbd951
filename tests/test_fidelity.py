"""Fidelity figures beside KID (training/fidelity.py through training/judge.py): the linear probe, the even
per-class selection, the layout resampling, and the whole evaluation on a small made-up folder with the tiny
packages (a pixel one and a latent one) and judges trained for a few steps. No fetched data."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rsgen_qgis.training import fidelity as fid  # noqa: E402
from rsgen_qgis.training import judge  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(n_per, centres, spread, seed):
    rng = np.random.default_rng(seed)
    f = np.concatenate([c + rng.normal(0, spread, (n_per, len(c))) for c in centres])
    y = np.repeat(np.arange(len(centres)), n_per)
    return f, y


def test_the_linear_probe_learns_separable_classes_and_not_shuffled_labels():
    """Three classes 8 standard deviations apart in 20-d: the probe is right on almost every test point; trained on
    the same features with labels shuffled it cannot beat chance by much on the held-out points."""
    centres = np.eye(3, 20) * 8.0
    f, y = _blobs(30, centres, 1.0, 0)
    ft, yt = _blobs(50, centres, 1.0, 1)
    assert fid.linear_probe(f, y, ft, yt, 3) >= 0.97
    shuffled = np.random.default_rng(2).permutation(y)
    assert fid.linear_probe(f, shuffled, ft, yt, 3) <= 0.6  # chance 1/3; 150 test points: 0.6 is > 5 sigma away
    assert fid.linear_probe(f, y, ft, yt, 3) == fid.linear_probe(f, y, ft, yt, 3)


def test_per_class_selection_is_even_and_bounded():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
    idx = fid.spread_per_class(labels, 4, [0, 1])
    assert list(idx) == [0, 3, 6, 9, 10, 11, 12]  # 4 spread over class 0, all 3 of class 1, none of class 2
    assert len(fid.spread_per_class(labels, 4, [7])) == 0


def test_nearest_resampling_keeps_class_ids():
    ids = np.arange(16, dtype=np.uint8).reshape(4, 4)
    up = fid.nearest(ids, 8)
    assert up.shape == (8, 8) and np.array_equal(up[::2, ::2], ids) and np.array_equal(up[1::2, 1::2], ids)
    assert np.array_equal(fid.nearest(up, 4), ids)


def test_generated_tiles_reach_the_segmenters_batches_and_without_them_nothing_changes():
    """train_segnet: the same seed without extra tiles gives the same weights twice; with extra tiles others."""
    from rsgen_qgis.training.evaluate import train_segnet

    rng = np.random.default_rng(0)
    maps = {"aerial": rng.integers(0, 255, (3, 256, 256, 3), dtype=np.uint8),
            "layout": rng.integers(0, 6, (3, 256, 256)).astype(np.uint8)}
    extra = (torch.rand(4, 3, 64, 64) * 2 - 1, torch.randint(0, 6, (4, 64, 64)))

    def weights(**kw):
        return torch.cat([p.detach().flatten() for p in train_segnet(maps, 0, 6, seed=3, steps=2, **kw).parameters()])
    a, b = weights(), weights()
    assert torch.equal(a, b)
    assert not torch.equal(a, weights(extra=extra))


def _folder(root):
    """AID with two classes of distinct colours (10 scenes each: 8 train, 2 test by data.aid_split's rule
    or thereabouts) and four maps pairs in train and in val, 256 px."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, rgb in (("Beach", (210, 190, 140)), ("Forest", (40, 90, 40))):
        d = root / "aid" / c
        d.mkdir(parents=True)
        for i in range(10):
            im = np.clip(np.array(rgb) + rng.normal(0, 20, (150, 150, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(im).save(d / f"{c.lower()}_{i}.jpg", quality=95)
    colours = np.array([(233, 228, 222), (250, 250, 249), (200, 216, 168)], np.uint8)
    for split in ("train", "val"):
        d = root / "maps" / split
        d.mkdir(parents=True)
        for i in range(4):
            ids = (np.add.outer(np.arange(256) // 32, np.arange(256) // 32 + i) % 3)
            aerial = np.clip(colours[ids] * 0.6 + rng.normal(0, 10, (256, 256, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(aerial).save(d / f"{i + 1}_aerial.jpg", quality=95)
            Image.fromarray(colours[ids]).save(d / f"{i + 1}_map.jpg", quality=95)


@pytest.fixture(scope="module")
def random_net():
    from rsgen_qgis.training import efficientnet_lite as eff

    torch.manual_seed(0)
    return eff.EfficientNetLite0().eval()


@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_the_fidelity_evaluation_runs_end_to_end_for_pixel_and_latent_packages(tmp_path, tiny_model_dir,
                                                                              tiny_latent_dir, random_net, kind):
    """Every figure is there, within its range, JSON-plain; the grids have the package's tile; a second run (the
    judges now from the cache) repeats the numbers."""
    from PIL import Image

    _folder(tmp_path / "data")
    model = os.path.join(tiny_model_dir, "rsgen-tiny") if kind == "pixel" else \
        os.path.join(tiny_latent_dir, "rsgen-tiny-latent")
    kw = dict(per_class=1, net=random_net, steps=2, guidance=1.0, sampler="ddim", subsets=3, size=2, seed=0,
              fidelity=True, aid_judge=True, probe_per_class=3, layouts=2, superres=2, segmenter=2,
              judge_steps={"classifier": 2, "segnet": 2},
              cache=str(tmp_path / "cache"), grids=str(tmp_path / "grids"), log=lambda s: None)
    res = judge.run_kid(str(tmp_path / "data"), [model], **kw)
    json.dumps(res)
    assert res["aid_judge"]["train_steps"] == 2 and 0 <= res["aid_judge"]["real_heldout"]["top1"] <= 1
    m = res["models"][0]
    t = m["tile_px"]
    assert m["aid_judge"]["n"] == 2 and 0 <= m["aid_judge"]["top1"] <= 1
    assert res["probe_judge"]["real_heldout"]["n"] == 4 and m["probe_judge"]["n"] == 2
    p = m["usefulness_probe"]
    assert p["train_per_class"] == 1 and p["classes"] == 2 and 0 <= p["trained_on_generated"] <= 1
    assert m["layout"]["tiles"] == 2 and m["layout"]["segnet_train_steps"] == 2
    assert np.asarray(Image.open(m["layout"]["grid_png"])).shape[:2] == (3 * (t + 2), 2 * (t + 2))
    g = m["segmenter_gain"]
    assert g["real_pairs"] == 2 and g["generated_tiles"] == 2 and len(g["miou_with"]) == len(g["miou_without"]) == 3
    sr = m["super_resolution_x4"]
    assert sr["images"] == 2 and sr["tile_px"] == t and sr["psnr_bicubic"] > 10
    assert np.asarray(Image.open(sr["grid_png"])).shape[:2] == (3 * (t + 2), 2 * (t + 2))
    again = judge.run_kid(str(tmp_path / "data"), [model], **kw)
    for key in ("aid_judge", "probe_judge", "usefulness_probe", "super_resolution_x4", "segmenter_gain"):
        a, b = dict(again["models"][0][key]), dict(m[key])
        assert a == b, key
    assert again["models"][0]["layout"]["miou_generated"] == m["layout"]["miou_generated"]
    assert "AID judge" in judge.table(res) and "probe judge" in judge.table(res) and "layout mIoU" in judge.table(res) and "segmenter" in judge.table(res)


def test_cached_real_features_are_keyed_by_the_feature_network_not_by_the_model(tmp_path, tiny_model_dir, random_net):
    """The real training scenes' features are a function of the judge's weights: with grids written (whose names
    carry the model's id) the cache files still carry only the network's tag."""
    _folder(tmp_path / "data")
    random_net.weights_tag = "abc"
    try:
        judge.run_kid(str(tmp_path / "data"), [os.path.join(tiny_model_dir, "rsgen-tiny")], per_class=1,
                      net=random_net, steps=2, guidance=1.0, sampler="ddim", subsets=2, size=2, fidelity=True,
                      probe_per_class=2, cache=str(tmp_path / "cache"), grids=str(tmp_path / "grids"),
                      log=lambda s: None)
    finally:
        del random_net.weights_tag
    names = sorted(n for n in os.listdir(tmp_path / "cache") if n.startswith("features_"))
    assert names == ["features_effnetabc_aid_train_1.npz", "features_effnetabc_aid_train_2.npz"]


def test_per_class_zero_runs_only_the_other_figures(tmp_path, tiny_model_dir, random_net):
    _folder(tmp_path / "data")
    res = judge.run_kid(str(tmp_path / "data"), [os.path.join(tiny_model_dir, "rsgen-tiny")], per_class=0,
                        net=random_net, steps=2, guidance=1.0, sampler="ddim", subsets=2, size=2, superres=2,
                        cache=str(tmp_path / "cache"), log=lambda s: None)
    m = res["models"][0]
    assert m["tiles"] == 0 and "kid_generated_vs_B" not in m and m["super_resolution_x4"]["images"] == 2
    assert "SR x4" in judge.table(res)


def test_the_real_only_segmenters_are_trained_once_and_reused_from_the_cache(tmp_path, tiny_model_dir, monkeypatch):
    """Usefulness (b): the three real-only segmenters do not depend on the model judged, so a second model (or a
    rerun) trains only the three with its own tiles; another step count is another key, and the reused scores
    are the ones first computed."""
    from rsgen_qgis.training import fidelity as fid

    _folder(tmp_path / "data")
    model = os.path.join(tiny_model_dir, "rsgen-tiny")
    settings = dict(steps=2, guidance=1.0, sampler="ddim")
    calls = []
    real = fid.train_segnet

    def counted(*a, **k):
        calls.append(k.get("extra") is None)
        return real(*a, **k)
    monkeypatch.setattr(fid, "train_segnet", counted)
    kw = dict(steps=2, log=lambda s: None)
    first = fid.segmenter_gain(model, 32, str(tmp_path / "data"), str(tmp_path / "cache"), settings, 2, 2, **kw)
    assert calls == [True] * 3 + [False] * 3
    assert len([f for f in os.listdir(tmp_path / "cache") if f.startswith("segnet_real_only_")]) == 3
    calls.clear()
    again = fid.segmenter_gain(model, 32, str(tmp_path / "data"), str(tmp_path / "cache"), settings, 2, 2, **kw)
    assert calls == [False] * 3 and again["miou_without"] == first["miou_without"]
    calls.clear()
    fid.segmenter_gain(model, 32, str(tmp_path / "data"), str(tmp_path / "cache"), settings, 2, 2, steps=3,
                       log=lambda s: None)
    assert calls == [True] * 3 + [False] * 3
