"""The ImageNet-pretrained judge (training/judge.py, docs/EVAL.md): the restricted loader of torch weight files
(training/safe_weights.py), the EfficientNet-Lite0 network, KID's behaviour in its features, the degradations, and
the generation of class tiles through the run-time engine (core.engine.generate.generate_array). No fetched data:
plumbing runs on a randomly initialised network; the checks of the pretrained weights skip without the package."""
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rsgen_qgis.core.engine.generate import generate, generate_array  # noqa: E402
from rsgen_qgis.core.request import GenerationRequest  # noqa: E402
from rsgen_qgis.training import efficientnet_lite as eff  # noqa: E402
from rsgen_qgis.training import judge  # noqa: E402
from rsgen_qgis.training.safe_weights import UnsafeWeights, pickle_globals, read_weights  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_MODEL = os.path.join(ROOT, "models", "rsgen-base")
PHOTO = "/usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg"  # Debian's matplotlib sample data
CPU = ["CPUExecutionProvider"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """torch on one thread here: two threads spin against each other on a loaded two-core machine (measured: ~15x
    the CPU time for the same features)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def random_net():
    """A randomly initialised network (He-initialised convolutions, so that the signal survives 50 layers)."""
    torch.manual_seed(0)
    net = eff.EfficientNetLite0().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net


class _Evil:
    def __reduce__(self):  # pickled as a reference to os.system; never unpickled here
        return (os.system, ("echo pwned",))


def _torch_legacy_with(obj) -> bytes:
    """A legacy torch file's head (magic number, protocol, system info) followed by a pickle of obj."""
    buf = io.BytesIO()
    for part in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}, obj, []):
        pickle.dump(part, buf, protocol=2)
    return buf.getvalue()


def test_the_loader_refuses_a_pickle_that_imports_anything_but_tensor_rebuilds(tmp_path):
    zipped = tmp_path / "evil_zip.pth"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": _Evil()}, protocol=2))
    zipped.write_bytes(buf.getvalue())
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(_torch_legacy_with({"w": _Evil()}))
    for path in (zipped, legacy):
        with pytest.raises(UnsafeWeights, match="posix|nt|system"):
            read_weights(str(path), legacy=True)
    with pytest.raises(UnsafeWeights, match="not a zip-format"):  # legacy files only when asked for
        read_weights(str(legacy))
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(UnsafeWeights, match="magic number"):
        read_weights(str(plain), legacy=True)


def test_a_stack_global_is_attributed_only_to_the_strings_just_before_it():
    """Protocol 4 imports through STACK_GLOBAL: the evil global is named; and a pickle that pushes harmless names,
    drops them and imports memoised other ones is not taken for the harmless names."""
    assert ("posix", "system") in pickle_globals(pickle.dumps(_Evil(), protocol=4)) or \
        ("nt", "system") in pickle_globals(pickle.dumps(_Evil(), protocol=4))
    ops = (b"\x80\x04" + b"\x8c\x02os\x94" + b"\x8c\x06system\x94" + b"0" + b"0"  # memo 0, 1 = os, system; popped
           + b"\x8c\x0bcollections\x8c\x0bOrderedDict" + b"0" + b"0"          # harmless names, popped
           + b"h\x00h\x01\x93" + b".")                                          # BINGET 0, 1; STACK_GLOBAL
    assert pickle_globals(ops) == {("os", "system")}
    ops2 = b"\x80\x04\x8c\x0bcollections\x8c\x0bOrderedDict)0\x93."  # a stack change between: unattributable
    assert pickle_globals(ops2) == {("?", "?")}


def test_the_loader_reads_state_dicts_saved_by_torch_in_both_formats(tmp_path):
    sd = {"conv.weight": torch.arange(6.0).reshape(2, 3), "bn.num_batches_tracked": torch.tensor(7),
          "half": torch.ones(3, dtype=torch.float16)}
    zipped, legacy = tmp_path / "z.pth", tmp_path / "l.pth"
    torch.save(sd, zipped)
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    for path in (zipped, legacy):
        got = read_weights(str(path), legacy=True)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert set(read_weights(str(zipped))) == set(sd)


def test_the_network_maps_every_package_parameter_and_pools_1280_features():
    net = eff.EfficientNetLite0()
    ours = net.state_dict()
    theirs = {}
    inverse = {v: k for k, v in eff.package_names().items()}
    for key, v in ours.items():
        prefix = max((p for p in inverse if key.startswith(p)), key=len)
        theirs[inverse[prefix] + key[len(prefix):]] = v
    assert len(theirs) == len(ours) == 296  # the package's file holds 296 tensors
    net.load_state_dict(eff.from_package_state(theirs), strict=True)
    with pytest.raises(KeyError):
        eff.from_package_state({"_blocks.16._bn0.weight": torch.zeros(1)})
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        stem = net.stem(x)
        assert stem.shape[-1] == 112 and net.blocks(stem).shape[1:] == (320, 7, 7)
        assert net.eval().features(x[:, :, :64, :64]).shape == (1, 1280) and net(x[:, :, :64, :64]).shape == (1, 1000)


def _pretrained_or_skip():
    try:
        return eff.pretrained()
    except ImportError as exc:
        pytest.skip(f"needs the judge's weights: {exc}")


def test_the_pretrained_judge_recognises_a_photograph():
    """The classic test photograph (Grace Hopper in uniform) is a 'military uniform' (ImageNet class 652)."""
    if not os.path.isfile(PHOTO):
        pytest.skip(f"{PHOTO} is not installed (Debian's matplotlib data)")
    net = _pretrained_or_skip()
    from PIL import Image

    u8 = np.asarray(Image.open(PHOTO).convert("RGB"))[None]
    with torch.no_grad():
        p = net(judge.preprocess(u8)).softmax(1)[0]
    assert int(p.argmax()) == 652 and float(p[652]) > 0.2


def test_the_network_agrees_with_the_packages_reference_implementation():
    """efficientnet-lite-pytorch (the weights' authors' torch code; not a requirement: install it by hand to run
    this) with the same state dict gives the same logits."""
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed")
    net = _pretrained_or_skip()
    ref = ref_mod.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(read_weights(eff.weights_path(), legacy=True))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(net(x), ref.eval()(x), atol=1e-4)


def _textures(n, seed, size=16, shift=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (n, 1, 1, 3))
    x = base + rng.normal(0, 25, (n, size, size, 3)) + shift
    return np.clip(x, 0, 255).astype(np.uint8)


def test_kid_is_near_zero_against_the_same_set_shuffled_and_larger_against_a_shifted_set(random_net):
    """150 textures in the (random) network's features at 32 px: against themselves shuffled and against another
    draw of the same kind KID is a small fraction of KID against the same textures 50 grey levels brighter."""
    fa = judge.features(random_net, _textures(150, 1), size=32)
    fb = judge.features(random_net, _textures(150, 7), size=32)
    fs = judge.features(random_net, _textures(150, 1, shift=50), size=32)
    perm = np.random.default_rng(2).permutation(len(fa))
    same, other = judge.kid_entry(fa, fa[perm], 50, 50, 0), judge.kid_entry(fb, fa, 50, 50, 0)
    shifted = judge.kid_entry(fs, fa, 50, 50, 0)
    assert fa.shape == (150, 1280) and shifted["subset_size"] == 50 and shifted["n"] == 150
    assert abs(same["kid"]) < 0.15 * shifted["kid"] and abs(other["kid"]) < 0.15 * shifted["kid"]
    assert same == judge.kid_entry(fa, fa[perm], 50, 50, 0)  # seeded


def test_degradations_keep_the_shape_and_repeat():
    a = _textures(3, 5, size=40)
    for name, fn in judge.DEGRADATIONS.items():
        d = fn(a, 0)
        assert d.shape == a.shape and d.dtype == np.uint8, name
        assert np.array_equal(d, fn(a, 0)) and not np.array_equal(d, a), name
    assert abs(judge.gaussian_noise(a, 10.0, 0).astype(float) - a).mean() == pytest.approx(8.0, abs=1.5)
    assert judge.resample(a, 16).shape == (3, 16, 16, 3)


def test_generate_array_gives_the_pixels_generate_writes(tmp_path, tiny_model_dir):
    import rasterio

    for cascade in (0, 2):
        req = GenerationRequest(extent=(453000.0, 6233600.0, 453000.0 + 40 * 4.0, 6233600.0 + 36 * 4.0),
                                crs="EPSG:32734", gsd=4.0, output=str(tmp_path / f"o{cascade}.tif"),
                                model="rsgen-tiny", prompt="houses", seed=3, steps=2, sampler="ddim",
                                cascade=cascade)
        arr = generate_array(req, model_dirs=[tiny_model_dir], providers=CPU)
        with rasterio.open(generate(req, model_dirs=[tiny_model_dir], providers=CPU).path) as ds:
            assert np.array_equal(arr.rgb, ds.read())
        assert arr.rgb.shape == (3, 36, 40) and arr.model_id == "rsgen-tiny" and arr.metadata["gsd_m"] > 0
    with pytest.raises(Exception, match="large areas"):
        generate_array(req.replace(large_area=True, cascade=0), model_dirs=[tiny_model_dir], providers=CPU)


def test_class_tiles_come_at_the_packages_native_tile_over_the_aid_footprint():
    """The shipped pixel package (64 px): 1 tile for each of 2 classes, 2 steps, through the engine; again the
    same bytes."""
    if not os.path.isfile(os.path.join(REAL_MODEL, "manifest.json")):
        pytest.skip("models/rsgen-base is not in this checkout")
    kw = dict(classes=["Beach", "Forest"], per_class=1, steps=2, guidance=3.0, sampler="ddim")
    g = judge.class_tiles(REAL_MODEL, log=lambda s: None, **kw)
    assert g["tiles"].shape == (2, 64, 64, 3) and g["tiles"].dtype == np.uint8
    assert list(g["labels"]) == [judge.AID_CLASSES.index("Beach"), judge.AID_CLASSES.index("Forest")]
    info = g["info"]
    assert info["tile_px"] == 64 and info["gsd_m"] == pytest.approx(600 / 64)
    assert info["metadata_used"]["gsd_m"] == pytest.approx(600 / 64, rel=0.01)
    assert info["metadata_used"]["lon"] is None  # outside the model's location coverage: sent as unknown
    assert np.array_equal(g["tiles"], judge.class_tiles(REAL_MODEL, log=lambda s: None, **kw)["tiles"])


def test_a_latent_package_gives_its_native_tile(tiny_latent_dir):
    g = judge.class_tiles(os.path.join(tiny_latent_dir, "rsgen-tiny-latent"), ["Farmland"], 1, 2, 1.0, "ddim",
                          log=lambda s: None)
    assert g["info"]["autoencoder_factor"] == 8 and g["tiles"].shape == (1,) + (g["info"]["tile_px"],) * 2 + (3,)


def test_the_kid_evaluation_runs_end_to_end_on_a_small_folder(tmp_path, tiny_model_dir, random_net):
    """A fake AID folder (two classes of flat-ish scenes), the tiny package, a random judge: every row is there,
    the JSON is plain data and a second run gives the same numbers."""
    from PIL import Image

    for c, seed in (("Beach", 1), ("Forest", 2)):
        d = tmp_path / "data" / "aid" / c
        d.mkdir(parents=True)
        for i, im in enumerate(_textures(10, seed, size=150)):
            Image.fromarray(im).save(d / f"{c.lower()}_{i}.jpg")
    kw = dict(per_class=1, net=random_net, steps=2, guidance=1.0, sampler="ddim", subsets=5, size=2, seed=0)
    tiny = os.path.join(tiny_model_dir, "rsgen-tiny")
    res = judge.run_kid(str(tmp_path / "data"), [tiny], log=lambda s: None, **kw)
    assert res["real"]["scenes"] == 4 and res["real"]["half_a"] == 2
    assert set(res["real"]["kid"]) == {"real_floor (A vs B)", "real A bicubic_4x_down_up", "real A jpeg_q20",
                                       "real A gaussian_noise_sigma10"}
    m = res["models"][0]
    assert m["id"] == "rsgen-tiny" and m["tiles"] == 2 and m["tile_px"] == 32
    assert {"kid_generated_vs_B", "kid_generated_vs_all_real", "kid_real_A_at_native_tile_vs_B"} <= set(m)
    assert "kid_real_A_through_autoencoder_vs_B" not in m  # a pixel package has no autoencoder floor
    json.dumps(res)
    again = judge.run_kid(str(tmp_path / "data"), [tiny], log=lambda s: None, grids=str(tmp_path / "grids"), **kw)
    assert again["models"][0]["kid_generated_vs_B"] == m["kid_generated_vs_B"]
    grid = np.asarray(Image.open(again["models"][0]["grid_png"]))
    assert grid.shape == (2 * (32 + 2), 32 + 2, 3)  # a row per class, one 32 px tile each, 2 px gaps
    assert again["real"]["kid"] == res["real"]["kid"]
    assert "generated" in judge.table(res)


def test_real_scenes_through_a_latent_packages_autoencoder_come_back_close_at_their_own_size(tiny_latent_dir,
                                                                                         tiny_model_dir):
    """The autoencoder floor under a latent model's KID: real scenes padded to the factor, encoded, decoded and
    cropped back. Colour ramps come back within 12 grey levels on the mean (TAEF2's round trip is about 24 dB on
    real AID scenes, 16 levels RMS; 9.5 measured on these 30 px ramps, whose 4 x 4 latents are mostly edge), each
    scene as itself (the other scene is 40 levels away); a pixel package has no floor."""
    yy, xx = np.mgrid[0:30, 0:30] / 29.0
    ramp = np.stack([60 + 120 * xx, 80 + 100 * yy, 140 - 60 * xx * yy], -1)
    u8 = np.round(np.stack([ramp, ramp[::-1, ::-1]])).astype(np.uint8)  # 30 px: padded to 32, cropped back
    latent = os.path.join(tiny_latent_dir, "rsgen-tiny-latent")
    rt = judge.through_autoencoder(latent, u8)
    assert rt.shape == u8.shape and rt.dtype == np.uint8
    err = np.abs(rt.astype(float) - u8)
    assert err.mean() < 12.0, err.mean()
    assert np.abs(rt[0].astype(float) - u8[1]).mean() > 3 * err.mean()  # each scene is its own, not a mean
    assert np.array_equal(rt, judge.through_autoencoder(latent, u8))
    assert judge.through_autoencoder(os.path.join(tiny_model_dir, "rsgen-tiny"), u8) is None


def test_the_kid_evaluation_of_a_latent_package_reports_its_autoencoder_floor(tmp_path, tiny_latent_dir, random_net):
    from PIL import Image

    for c, seed in (("Beach", 1), ("Forest", 2)):
        d = tmp_path / "data" / "aid" / c
        d.mkdir(parents=True)
        for i, im in enumerate(_textures(10, seed, size=150)):
            Image.fromarray(im).save(d / f"{c.lower()}_{i}.jpg")
    res = judge.run_kid(str(tmp_path / "data"), [os.path.join(tiny_latent_dir, "rsgen-tiny-latent")], per_class=1,
                        net=random_net, steps=2, guidance=1.0, sampler="ddim", subsets=5, size=2, seed=0,
                        log=lambda s: None)
    m = res["models"][0]
    assert m["autoencoder"] == "taef2"
    assert set(m["kid_real_A_through_autoencoder_vs_B"]) >= {"kid", "kid_std", "n"}
    assert m["kid_real_A_through_autoencoder_vs_B"]["n"] == res["real"]["half_a"]
    assert "real A via autoencoder taef2" in judge.table(res)


def test_class_tiles_at_a_given_gsd_cover_the_aid_footprint_with_fewer_pixels_than_the_tile(tiny_latent_dir):
    """--gsd: 600 m at 12.5 m/px = 48 px, below the latent package's 64 px tile (the engine's canvas is a tile)."""
    g = judge.class_tiles(os.path.join(tiny_latent_dir, "rsgen-tiny-latent"), ["Farmland"], 1, 2, 1.0, "ddim",
                          log=lambda s: None, gsd=12.5)
    assert g["tiles"].shape == (1, 48, 48, 3) and g["info"]["px"] == 48 and g["info"]["tile_px"] == 64
    assert g["info"]["gsd_m"] == pytest.approx(12.5)


def test_default_cache_stays_in_runs(tmp_path, monkeypatch):
    """A report written into a model package must not leave the decoded scenes (hundreds of MB) in models/."""
    monkeypatch.chdir(tmp_path)
    assert judge.default_cache(str(tmp_path / "runs" / "judge" / "kid.json")) == str(tmp_path / "runs" / "cache")
    assert judge.default_cache("models/rsgen-base-1/eval.json") == os.path.join("runs", "cache")
    assert judge.default_cache("eval.json") == os.path.join("runs", "cache")
