"""Class guidance (core.engine.classguide, training.classguide): the exported graph's own input gradient equals torch's
autograd, the prompt's class target, the package entry, and generation through the plugin's pipeline."""
import json
import os
import shutil
import zlib

import numpy as np
import pytest

from rsgen_qgis.core.engine.classguide import ClassGuide, ClassGuideSpec, logsnr_input, resolve
from rsgen_qgis.core.errors import ModelPackageError, ParameterError
from rsgen_qgis.core.request import GenerationRequest

torch = pytest.importorskip("torch", reason="torch (training extras) builds the class-guide graph")

CLASSES = ["Forest", "Desert", "Harbour"]
PHRASES = {"Forest": ["a forest", "dense trees"], "Desert": ["a desert", "sand dunes"],
           "Harbour": ["a harbour", "docks with ships"]}


COLOURS = np.array([[-0.6, 0.5, -0.6], [0.7, 0.5, -0.2], [-0.7, -0.3, 0.7]], np.float32)  # green, sand, blue


def _colour_guide(steps=100, seed=0):
    """A tiny class guide trained for a moment on a synthetic task whose classes are colours (Forest green,
    Desert sand, Harbour blue), noised at every timestep of the tiny package's schedule: guidance towards a
    class must then turn the image that colour."""
    import torch.nn.functional as F
    from rsgen_qgis.core.engine.samplers import Schedule
    from rsgen_qgis.training.classguide import GuideClassifier, logsnr_channel
    from rsgen_qgis.training.train import SCHEDULE

    ab = torch.tensor(np.asarray(Schedule.from_config(dict(SCHEDULE)).alphas_cumprod, np.float32))
    torch.manual_seed(seed)
    net = GuideClassifier(3, (8, 12, 16))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(steps):
        y = torch.randint(0, 3, (32,))
        x0 = (torch.from_numpy(COLOURS)[y][:, :, None, None] + 0.3 * torch.randn(32, 3, 32, 32)).clamp(-1, 1)
        a = ab[torch.randint(0, len(ab), (32,))]
        xt = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * torch.randn_like(x0)
        loss = F.cross_entropy(net(xt, logsnr_channel(a)), y)
        opt.zero_grad(); loss.backward(); opt.step()
    return net.eval()


def _random_guide(n=3, seed=0, widths=(8, 12, 16)):
    from rsgen_qgis.training.classguide import GuideClassifier

    torch.manual_seed(seed)
    net = GuideClassifier(n, widths)
    with torch.no_grad():  # BatchNorm statistics and affine that are not the identity, so folding is exercised
        for bn in net.norms:
            bn.running_mean.uniform_(-0.3, 0.3); bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5); bn.bias.uniform_(-0.3, 0.3)
        net.head.weight.mul_(20.0)  # confident enough for the softmax to move
    return net.eval()


def test_exported_gradient_equals_autograd(tmp_path):
    import onnxruntime as ort
    from rsgen_qgis.training.classguide import GradNet, export

    net = _random_guide()
    x = torch.randn(3, 3, 32, 48)
    ls = torch.tensor([-0.5, 0.0, 0.7])
    tgt = torch.softmax(torch.randn(3, 3) * 3, 1)
    xr = x.clone().requires_grad_(True)
    (tgt * torch.log_softmax(net(xr, ls), 1)).sum().backward()
    grad, probs = GradNet(net)(x, ls, tgt)
    scale = float(xr.grad.abs().max())
    assert scale > 0
    assert float((grad - xr.grad).abs().max()) < 1e-5 * scale
    assert torch.allclose(probs, torch.softmax(net(x, ls), 1), atol=1e-6)
    path = str(tmp_path / "g.onnx")
    export(net, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in ((3, 3, 32, 48), (3, 3, 64, 64)):  # sizes other than the traced one
        xs = torch.randn(*shape)
        xr = xs.clone().requires_grad_(True)
        (tgt * torch.log_softmax(net(xr, ls), 1)).sum().backward()
        g = sess.run(["grad"], {"sample": xs.numpy(), "logsnr": ls.numpy(), "target": tgt.numpy()})[0]
        assert g.shape == shape
        assert np.abs(g - xr.grad.numpy()).max() < 1e-4 * float(xr.grad.abs().max())


def test_logsnr_input_matches_training():
    from rsgen_qgis.training.classguide import logsnr_channel

    for a in (1e-9, 0.01, 0.3, 0.5, 0.9, 0.999999):
        assert logsnr_input(a) == pytest.approx(float(logsnr_channel(torch.tensor(a, dtype=torch.float64))), abs=1e-6)


def _fake_embed(words):
    """A deterministic bag-of-words embedding (crc32: str hashes change with every process): prompts sharing
    words are similar."""
    out = []
    for p in words:
        v = np.zeros(64)
        for w in p.lower().split():
            v[zlib.crc32(w.encode()) % 64] += 1.0 if w not in ("a", "with", "of") else 0.1
        out.append(v / max(np.linalg.norm(v), 1e-9))
    return np.array(out, np.float32)


def _spec(**kw):
    d = dict(file="g.onnx", classes=CLASSES, phrases=PHRASES, temperature=0.07, min_similarity=0.45,
             min_logsnr=-5.0, max_logsnr=10.0, default_scale=4.0)
    d.update(kw)
    return ClassGuideSpec.from_manifest(d)


def test_target_follows_the_prompt_and_refuses_unrelated_ones():
    g = ClassGuide(_spec(), session=None, embed=_fake_embed)
    q = g.target(_fake_embed(["sand dunes at noon"])[0])
    assert q is not None and q.argmax() == 1 and q[1] > 0.9 and q.sum() == pytest.approx(1.0)
    assert g.target(_fake_embed(["completely unrelated words"])[0]) is None
    assert g.target(None) is None
    assert resolve(None, g, _fake_embed(["dense trees"])[0]).scale == 4.0  # the model's default
    assert resolve(0.0, g, _fake_embed(["dense trees"])[0]).target is None
    r = resolve(2.5, g, _fake_embed(["dense trees"])[0])
    assert r.scale == 2.5 and r.tag.startswith("scale 2.5 towards Forest")
    assert resolve(None, g, None).tag == "off: no prompt"
    assert "near none" in resolve(None, g, _fake_embed(["quantum chromodynamics"])[0]).tag
    assert resolve(3.0, None, None).tag.startswith("off: the model has no class guide")


def test_malformed_section_is_refused():
    with pytest.raises(ModelPackageError):
        _spec(phrases={"Forest": ["a forest"]})
    with pytest.raises(ModelPackageError):
        _spec(temperature=0)
    with pytest.raises(ModelPackageError):
        ClassGuideSpec.from_manifest({"file": "g.onnx"})


@pytest.mark.parametrize("bad", [-1, 60, True, "3"])
def test_request_refuses_bad_class_guidance(bad):
    with pytest.raises(ParameterError, match="Class guidance"):
        GenerationRequest(extent=(0, 0, 320, 320), crs="EPSG:32633", output="x.tif", gsd=10.0, class_guidance=bad)


@pytest.fixture(scope="module")
def guided_package(tiny_model_dir, tmp_path_factory):
    """The tiny package with a random-weights class guide whose phrases are what the tests prompt."""
    from rsgen_qgis.training.classguide import add_to_package, export

    root = tmp_path_factory.mktemp("guided")
    dst = root / "rsgen-tiny-guided"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), dst)
    with open(dst / "manifest.json") as f:
        m = json.load(f)
    m["id"] = "rsgen-tiny-guided"
    with open(dst / "manifest.json", "w") as f:
        json.dump(m, f)
    graph = str(root / "g.onnx")
    export(_colour_guide(), graph)
    # min_similarity -1: the tiny text encoder has random weights, so every prompt is "near" some class
    add_to_package(str(dst), graph, CLASSES, PHRASES, default_scale=0.0, min_similarity=-1.0, temperature=0.005)
    return str(root)


def _req(tmp_path, name, **kw):
    d = dict(extent=(500000.0, 4000000.0, 500640.0, 4000640.0), crs="EPSG:32633",
             output=str(tmp_path / name), gsd=10.0, prompt="a harbour", seed=3, steps=6,
             model="rsgen-tiny-guided")
    d.update(kw)
    return GenerationRequest(**d)


def _guide_probs(pkg_root, path):
    """The class guide's own probabilities on a written image (at the lowest noise level)."""
    import onnxruntime as ort
    import rasterio

    with rasterio.open(path) as src:
        x = src.read().astype(np.float32)[None] / 127.5 - 1
    sess = ort.InferenceSession(os.path.join(pkg_root, "rsgen-tiny-guided", "class_guide.onnx"),
                                providers=["CPUExecutionProvider"])
    return sess.run(["probs"], {"sample": x, "logsnr": np.ones(1, np.float32),
                                "target": np.full((1, 3), 1 / 3, np.float32)})[0][0]


def _channel_means(path):
    import rasterio

    with rasterio.open(path) as src:
        return src.read().reshape(3, -1).mean(1), src.tags()


def test_generation_with_class_guidance(guided_package, tmp_path):
    """Guidance towards Harbour (blue) makes the image bluer and towards Forest (green) less red than the same
    seed unguided; the guide's own probability of the target class rises; the tags say what was done."""
    from rsgen_qgis.core.engine.generate import generate

    dirs = [guided_package]
    off = generate(_req(tmp_path, "off.tif"), model_dirs=dirs)
    sea = generate(_req(tmp_path, "sea.tif", class_guidance=20.0), model_dirs=dirs)
    wood = generate(_req(tmp_path, "wood.tif", class_guidance=20.0, prompt="a forest"), model_dirs=dirs)
    (m0, t0), (ms, ts), (mw, tw) = (_channel_means(r.path) for r in (off, sea, wood))
    assert t0["class_guidance"] == "off" and json.loads(ts["request"])["class_guidance"] == 20.0
    assert ts["class_guidance"].startswith("scale 20 towards Harbour")
    assert tw["class_guidance"].startswith("scale 20 towards Forest")
    assert (ms[2] - ms[0]) - (m0[2] - m0[0]) > 10          # bluer
    assert (m0[0] - mw[0]) > 5 and (mw[1] - mw[0]) - (m0[1] - m0[0]) > 5  # greener: red down against green
    harbour = CLASSES.index("Harbour")
    assert _guide_probs(guided_package, sea.path)[harbour] > 1.5 * _guide_probs(guided_package, off.path)[harbour]


def test_model_default_and_models_without_a_guide(guided_package, tiny_model_dir, tmp_path):
    import rasterio
    from rsgen_qgis.core.engine.generate import generate

    mp = os.path.join(guided_package, "rsgen-tiny-guided", "manifest.json")
    with open(mp) as f:
        assert json.load(f)["defaults"]["class_guidance"] == 0.0
    r = generate(_req(tmp_path, "plain.tif", model="rsgen-tiny", class_guidance=5.0), model_dirs=[tiny_model_dir])
    assert any("no class guide" in w for w in r.warnings)
    with rasterio.open(r.path) as src:
        assert src.tags()["class_guidance"].startswith("off: the model has no class guide")


def test_large_area_path_with_class_guidance(guided_package, tmp_path):
    """Blocks are guided as the single-request canvas is, and overlapping requests still agree."""
    import rasterio
    from rsgen_qgis.core.engine.generate import generate

    dirs = [guided_package]
    a = generate(_req(tmp_path, "a.tif", class_guidance=8.0, large_area=True), model_dirs=dirs)
    b = generate(_req(tmp_path, "b.tif", class_guidance=8.0, large_area=True,
                      extent=(500320.0, 4000000.0, 500960.0, 4000640.0)), model_dirs=dirs)
    c = generate(_req(tmp_path, "c.tif", class_guidance=0.0, large_area=True), model_dirs=dirs)
    with rasterio.open(a.path) as ra, rasterio.open(b.path) as rb, rasterio.open(c.path) as rc:
        pa, pb, pc = ra.read(), rb.read(), rc.read()
        assert ra.tags()["class_guidance"].startswith("scale 8")
    assert np.array_equal(pa[:, :, 32:], pb[:, :, :32])
    assert np.abs(pa.astype(int) - pc.astype(int)).mean() > 0.5


def test_records_keep_the_scale_that_ran(guided_package, tmp_path):
    """A request that left class guidance to the model records the model's default as a number, so the record
    regenerates the same pixels even if a later package changes its default; records from before class
    guidance existed read as off."""
    from rsgen_qgis.core.geo.geotiff import read_tags
    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.recall import recorded_request, recorded_request_of

    root = tmp_path / "models"
    shutil.copytree(guided_package, root)
    mp = root / "rsgen-tiny-guided" / "manifest.json"
    m = json.loads(mp.read_text())
    m["class_guide"]["default_scale"] = 6.0
    mp.write_text(json.dumps(m))
    first = generate(_req(tmp_path, "first.tif"), model_dirs=[str(root)])
    tags = read_tags(first.path)
    assert json.loads(tags["request"])["class_guidance"] == 6.0
    assert tags["class_guidance"].startswith("scale 6 towards Harbour")
    again = generate(recorded_request_of(first.path).to_request(str(tmp_path / "again.tif")),
                     model_dirs=[str(root)])
    import rasterio

    with rasterio.open(first.path) as fa, rasterio.open(again.path) as fb:
        assert np.array_equal(fa.read(), fb.read())
    old = dict(tags)
    rec = json.loads(old["request"])
    rec.pop("class_guidance")
    old["request"] = json.dumps(rec)
    assert recorded_request(old).to_request(str(tmp_path / "old.tif")).class_guidance == 0.0
