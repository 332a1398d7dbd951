"""One engine for pixel and latent packages (docs/ENGINE.md), with a tiny random latent denoiser on the real
TAEF2 autoencoder graphs (models/taef2, committed): every path runs through the shared loop and the model's
autoencoder; large areas agree byte for byte where requests overlap; inpainting keeps the source outside the
mask; broken autoencoders are refused naming the file."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import rasterio

from rsgen_qgis.core import errors
from rsgen_qgis.core.engine import loop
from rsgen_qgis.core.engine.generate import generate
from rsgen_qgis.core.request import Conditions, GenerationRequest
from rsgen_qgis.core.runtime import autoencoder as ae_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = ["CPUExecutionProvider"]
X0, Y0 = 453000.0, 6233600.0


def _request(tmp_path, name, model, w=96, h=80, gsd=4.0, dx=0, dy=0, **kw):
    x0, y0 = X0 + dx * gsd, Y0 + dy * gsd
    kw = {"prompt": "houses and roads", "seed": 4, "steps": 2, "sampler": "ddim", "guidance": 1.0, **kw}
    return GenerationRequest(extent=(x0, y0, x0 + w * gsd, y0 + h * gsd), crs="EPSG:32734", gsd=gsd,
                             output=str(tmp_path / name), model=model, **kw)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.tags(), ds.transform


KINDS = {"pixel": "rsgen-tiny", "latent": "rsgen-tiny-latent"}


def _dirs(kind, tiny_model_dir, tiny_latent_dir):
    return [tiny_model_dir if kind == "pixel" else tiny_latent_dir]


def _conditions(path, w=96, h=80):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[20:50, 30:70] = True
    layout = np.zeros((h, w), np.uint8)
    layout[:, 40:48] = 1
    return {"single": Conditions(), "layout": Conditions(layout=layout),
            "inpaint": Conditions(image=img, mask=mask), "variation": Conditions(image=img, strength=0.5),
            "guide": Conditions(guide=img[:, ::4, ::4].copy())}[path]


PATHS = [("single", False, 0), ("layout", False, 0), ("inpaint", False, 0), ("variation", False, 0),
         ("guide", False, 0), ("single", True, 0), ("inpaint", True, 0), ("variation", True, 0),
         ("single", False, 2), ("single", True, 2)]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("cond, large, cascade", PATHS)
def test_every_path_runs_the_shared_loop_and_the_autoencoder(kind, cond, large, cascade, tmp_path, monkeypatch,
                                                             tiny_model_dir, tiny_latent_dir):
    """A path that a model kind does not take through core.engine.loop.run and its own autoencoder fails here."""
    runs, decodes = [], []
    real_run = loop.run
    monkeypatch.setattr(loop, "run", lambda *a, **k: runs.append(1) or real_run(*a, **k))
    for cls in (ae_mod.Identity, ae_mod.GraphAutoencoder):
        real = cls.decode
        monkeypatch.setattr(cls, "decode", (lambda r, c: lambda self, z, **kw: decodes.append(c) or r(self, z, **kw))(real, cls))
    c = _conditions(cond)
    r = generate(_request(tmp_path, "o.tif", KINDS[kind], large_area=large, cascade=cascade, conditions=c),
                 model_dirs=_dirs(kind, tiny_model_dir, tiny_latent_dir), providers=CPU)
    img, tags, tr = _read(r.path)
    assert img.shape == (3, 80, 96) and tr.c == X0 and tr.a == 4.0
    assert runs, "the shared sampling loop did not run"
    want = ae_mod.Identity if kind == "pixel" else ae_mod.GraphAutoencoder
    assert decodes and set(decodes) == {want}
    if kind == "latent":
        assert tags["autoencoder"].startswith("taef2 (factor 8, 32 channels)")
    if c.mask is not None:
        assert np.array_equal(img[:, ~c.mask], c.image[:, ~c.mask])
        assert not np.array_equal(img[:, c.mask], c.image[:, c.mask])


def test_latent_large_areas_agree_byte_for_byte_where_they_overlap(tmp_path, tiny_latent_dir):
    """Two requests offset by a number of pixels that is not a multiple of the latent factor nor of a block:
    identical in their overlap (world-anchored latent noise, blocks and their decode)."""
    md = [tiny_latent_dir]
    a = _read(generate(_request(tmp_path, "a.tif", KINDS["latent"], w=150, h=120, large_area=True),
                       model_dirs=md, providers=CPU).path)[0]
    b = _read(generate(_request(tmp_path, "b.tif", KINDS["latent"], w=150, h=120, dx=53, dy=-37, large_area=True),
                       model_dirs=md, providers=CPU).path)[0]
    # b starts 53 px right and 37 px lower on the ground: b's first row is a's row 37, its first column a's 53
    ov_a = a[:, 37:120, 53:150]
    ov_b = b[:, 0:120 - 37, 0:150 - 53]
    assert ov_a.shape == ov_b.shape and ov_a.size > 0
    assert np.array_equal(ov_a, ov_b)
    assert a.std() > 0


def test_latent_single_request_repeats(tmp_path, tiny_latent_dir):
    md = [tiny_latent_dir]
    a = _read(generate(_request(tmp_path, "a.tif", KINDS["latent"]), model_dirs=md, providers=CPU).path)[0]
    b = _read(generate(_request(tmp_path, "b.tif", KINDS["latent"]), model_dirs=md, providers=CPU).path)[0]
    c = _read(generate(_request(tmp_path, "c.tif", KINDS["latent"], seed=5), model_dirs=md, providers=CPU).path)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _broken(tiny_latent_dir, tmp_path, edit_model=None, edit_ae=None):
    root = tmp_path / "broken"
    shutil.copytree(tiny_latent_dir, root)
    for folder, edit in (("rsgen-tiny-latent", edit_model), ("taef2", edit_ae)):
        if edit is None:
            continue
        p = root / folder / "manifest.json"
        m = json.loads(p.read_text())
        edit(m, root / folder)
        p.write_text(json.dumps(m))
    return str(root / "rsgen-tiny-latent")


@pytest.mark.parametrize("what, edit_model, edit_ae, message", [
    ("channels", lambda m, d: m["autoencoder"].update(channels=16), None, r"taef2.*decoder.onnx.*16 channels"),
    ("factor", lambda m, d: m["autoencoder"].update(factor=4), None, r"decoder.onnx.*factor 4"),
    ("decoder", lambda m, d: m["autoencoder"].update(decoder_sha256="0" * 64), None,
     r"decoder.onnx: this is not the decoder"),
    ("missing package", lambda m, d: m["autoencoder"].update(package="taef9"), None,
     r"manifest.json: model 'rsgen-tiny-latent' needs the autoencoder package 'taef9'"),
    ("missing file", None, lambda m, d: os.remove(d / "decoder.onnx"), r"decoder.onnx: file listed in the manifest is missing"),
    ("ae channels", None, lambda m, d: m["autoencoder"].update(channels=16), r"decoder.onnx.*factor 8 and 16 channels"),
])
def test_a_broken_or_mismatched_autoencoder_is_refused_naming_the_file(what, edit_model, edit_ae, message, tmp_path,
                                                                      tiny_latent_dir):
    pkg = _broken(tiny_latent_dir, tmp_path, edit_model, edit_ae)
    with pytest.raises(errors.ModelPackageError, match=message):
        generate(_request(tmp_path, "x.tif", pkg), providers=CPU)
    assert not os.path.exists(tmp_path / "x.tif")


def test_an_autoencoder_without_encoder_generates_but_refuses_inpainting_and_variation(tmp_path, tiny_latent_dir):
    def decode_only(m, d):
        enc = m["autoencoder"].pop("encoder")
        for name in filter(None, (enc["file"], enc.get("fp16_file"))):
            del m["files"][name]
            os.remove(d / name)
    pkg = _broken(tiny_latent_dir, tmp_path, None, decode_only)
    assert os.path.isfile(generate(_request(tmp_path, "ok.tif", pkg), providers=CPU).path)
    sr = dataclasses.replace(_conditions("guide"), strength=0.6)  # super-resolution from the upsampled guide
    for c in (_conditions("inpaint"), _conditions("variation"), sr):
        with pytest.raises(errors.ConditionError, match="no image encoder.*cannot inpaint, make variations or "
                                                        "super-resolve"):
            generate(_request(tmp_path, "no.tif", pkg, conditions=c), providers=CPU)
    assert not os.path.exists(tmp_path / "no.tif")


def test_autoencoders_are_not_offered_as_models(tiny_latent_dir):
    from rsgen_qgis.core.runtime.models import discover, load

    ids = [p.id for p in discover([tiny_latent_dir])]
    assert "rsgen-tiny-latent" in ids and "taef2" not in ids
    with pytest.raises(errors.ModelPackageError, match="autoencoder package"):
        load("taef2", [tiny_latent_dir], CPU)


@pytest.mark.parametrize("kind,expected", [("pixel", 2), ("latent", 1)])
def test_large_area_block_footprint_defaults_to_the_package_kind(kind, expected, tmp_path, tiny_model_dir,
                                                                 tiny_latent_dir):
    """block_windows None (the request's default): a tile plus 2 strides for pixel packages, 1 for latent ones;
    the same pixels as asking for that number, recorded in the large_area tag, and None round-trips."""
    md = _dirs(kind, tiny_model_dir, tiny_latent_dir)
    r = generate(_request(tmp_path, "d.tif", KINDS[kind], w=150, h=120, large_area=True), model_dirs=md,
                 providers=CPU)
    img, tags, _ = _read(r.path)
    assert json.loads(tags["large_area"])["block_windows"] == expected
    assert r.stats.layout.block_windows == expected
    assert json.loads(tags["request"])["block_windows"] is None
    same = _read(generate(_request(tmp_path, "e.tif", KINDS[kind], w=150, h=120, large_area=True,
                                   block_windows=expected), model_dirs=md, providers=CPU).path)[0]
    assert np.array_equal(img, same)
    other = _read(generate(_request(tmp_path, "f.tif", KINDS[kind], w=150, h=120, large_area=True,
                                    block_windows=3 - expected), model_dirs=md, providers=CPU).path)[0]
    assert not np.array_equal(img, other)
