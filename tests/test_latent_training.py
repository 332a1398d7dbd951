"""The latent model's training chain at toy scale, on the committed TAEF2 graphs: prepared images -> latent pack
(encoded by the run time's own autoencoder) -> a few training steps -> a latent package -> an image through
generate() -> training starts again from the committed package's graph (state_from_onnx)."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
PIL = pytest.importorskip("PIL.Image")


def _smooth(rng, size):
    yy, xx = np.mgrid[0:size, 0:size] / size
    a, b, c = rng.uniform(1, 6, 3)
    img = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], -1)
    return ((img + 1) * 127.5).astype(np.uint8)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """A prepared-data folder as prepare-data writes it: AID-like scenes (two classes) and maps pairs."""
    root = tmp_path_factory.mktemp("toydata")
    rng = np.random.default_rng(0)
    for cls in ("Forest", "Farmland"):
        d = root / "aid" / cls
        d.mkdir(parents=True)
        for i in range(5):
            PIL.fromarray(_smooth(rng, 150)).save(d / f"{cls.lower()}_{i}.jpg", quality=95)
    d = root / "maps" / "train"
    d.mkdir(parents=True)
    colours = np.array([(233, 228, 222), (250, 250, 249), (200, 216, 168)], np.uint8)
    for i in range(2):
        PIL.fromarray(_smooth(rng, 256)).save(d / f"{i + 1}_aerial.jpg", quality=95)
        ids = (np.add.outer(np.arange(256) // 64, np.arange(256) // 64) % 3)
        PIL.fromarray(colours[ids]).save(d / f"{i + 1}_map.jpg", quality=95)
    return str(root)


def _toy_pack_and_captions(toy_data, tmp_path, tiny_latent_dir) -> str:
    """The toy latent pack at tmp_path/runs/latents.npz, and caption embeddings where train.py looks for them
    (runs/cache; the tiny text encoder's 32 dimensions, random here)."""
    from rsgen_qgis.training.captions import all_captions
    from rsgen_qgis.training.latent_data import encode_dataset

    pack = encode_dataset(toy_data, os.path.join(tiny_latent_dir, "taef2"), str(tmp_path / "runs" / "latents.npz"))
    cache = tmp_path / "runs" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    caps = all_captions()
    np.savez(cache / "caption_emb.npz", captions=np.array(caps),
             emb=np.random.default_rng(0).standard_normal((len(caps), 32)).astype(np.float32))
    return pack


class _SameEmb(dict):
    """Every caption gets the same vector (for tests where the captions are not what is tested)."""

    def __missing__(self, key):
        return np.ones(8, np.float32)


def test_pack_train_export_generate_and_continue(toy_data, tmp_path, tiny_latent_dir):
    import torch

    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.request import GenerationRequest
    from rsgen_qgis.training import export, train
    from rsgen_qgis.training.captions import all_captions
    from rsgen_qgis.training.latent_data import encode_dataset, load_pack
    from rsgen_qgis.training.model import Denoiser, DenoiserConfig

    ae_dir = os.path.join(tiny_latent_dir, "taef2")
    pack = encode_dataset(toy_data, ae_dir, str(tmp_path / "runs" / "latents.npz"))
    p = load_pack(pack)
    assert p["aid_z"].shape == (8, 32, 18, 18) and p["aid_g"].shape == p["aid_z"].shape  # 4 of 5 per class: train
    assert p["maps_z"].shape == (2, 32, 32, 32) and p["maps_layout"].shape == (2, 6, 32, 32)
    assert np.abs(p["maps_layout"].astype(int).sum(1) - 255).max() <= 3  # class fractions of each latent cell
    assert 0.3 < float(np.std(p["aid_z"].astype(np.float32))) < 3  # standardised by the package's statistics
    # caption embeddings as train.py caches them (the tiny text encoder's 32 dimensions; random here)
    cache = tmp_path / "runs" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    caps = all_captions()
    np.savez(cache / "caption_emb.npz", captions=np.array(caps),
             emb=np.random.default_rng(0).standard_normal((len(caps), 32)).astype(np.float32))
    out = str(tmp_path / "runs" / "train")
    args = ["--latents", pack, "--out", out, "--minutes", "0.05", "--channels", "8,16", "--attention", "0,1",
            "--tile", "8", "--batch", "2", "--threads", "1", "--save-every", "100"]
    train.main(args)
    st = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    assert st["step"] >= 1 and st["config"]["image_channels"] == 32
    pkg = str(tmp_path / "pkgs" / "rsgen-toy-latent")
    export.main(["--checkpoint", os.path.join(out, "last.pt"), "--out", pkg, "--autoencoder", ae_dir,
                 "--text-kind", "tiny", "--no-fp16"])
    r = generate(GenerationRequest(extent=(453000.0, 6233600.0, 453256.0, 6233856.0), crs="EPSG:32734", gsd=4.0,
                                   output=str(tmp_path / "toy.tif"), model=pkg, prompt="a forest", steps=2,
                                   guidance=1.0, sampler="ddim"), model_dirs=[tiny_latent_dir],
                 providers=["CPUExecutionProvider"])
    assert os.path.isfile(r.path)
    # exporting again over the package keeps its card and records, and drops a graph the export no longer writes
    for name, text in (("MODEL_CARD.md", "# card"), ("eval_a1.json", "{}"), ("old_int8.onnx", "stale")):
        with open(os.path.join(pkg, name), "w") as f:
            f.write(text)
    export.main(["--checkpoint", os.path.join(out, "last.pt"), "--out", pkg, "--autoencoder", ae_dir,
                 "--text-kind", "tiny", "--no-fp16"])
    with open(os.path.join(pkg, "manifest.json")) as f:
        files = list(json.load(f)["files"])
    assert sorted(os.listdir(pkg)) == sorted(files + ["MODEL_CARD.md", "eval_a1.json", "manifest.json"])
    assert "denoiser.onnx" in files and "old_int8.onnx" not in files
    # the committed package is a starting point: its graph holds the EMA weights under their names
    model = Denoiser(DenoiserConfig.from_dict(st["config"]))
    sd = export.state_from_onnx(os.path.join(pkg, "denoiser.onnx"), model)
    assert all(torch.equal(sd[k], v) for k, v in st["ema"].items())
    # the package's widths decide the shape: other --channels / --attention are overridden, not a shape error
    train.main(args[:2] + ["--out", out + "2", "--init-onnx", os.path.join(pkg, "denoiser.onnx")] + args[4:6]
               + ["--channels", "12,24,36", "--attention", "0,0,1"] + args[10:])
    # the instalments add up: the step count goes on from the package's manifest, its warm-up from this run's start
    st2 = torch.load(os.path.join(out + "2", "last.pt"), map_location="cpu", weights_only=True)
    assert st2["step0"] == st["step"] and st2["step"] > st["step"]
    assert st2["prior_wall_s"] == round(st["elapsed_s"])
    assert st2["config"] == st["config"]
    pkg2 = str(tmp_path / "pkgs" / "rsgen-toy-latent-2")
    export.main(["--checkpoint", os.path.join(out + "2", "last.pt"), "--out", pkg2, "--autoencoder", ae_dir,
                 "--text-kind", "tiny", "--no-fp16"])
    with open(os.path.join(pkg2, "manifest.json")) as f:
        t2 = json.load(f)["training"]
    assert t2["steps"] == st2["step"] and t2["wall_s"] == round(st2["elapsed_s"] + st2["prior_wall_s"])
    # a grown UNet (--extra-layers) from the package: its record says so, it exports, generates, and a run from the
    # grown package takes its layers from the manifest as it takes the widths
    train.main(args[:2] + ["--out", out + "3", "--init-onnx", os.path.join(pkg, "denoiser.onnx"),
                           "--extra-layers", "1,0"] + args[4:])
    st3 = torch.load(os.path.join(out + "3", "last.pt"), map_location="cpu", weights_only=True)
    assert list(st3["config"]["extra_layers"]) == [1, 0] and st3["step0"] == st["step"]
    assert {k: v for k, v in st3["config"].items() if k != "extra_layers"} == \
        {k: v for k, v in st["config"].items() if k != "extra_layers"}
    assert any(k.startswith("unet.down_blocks.0.resnets.1.") for k in st3["ema"])
    pkg3 = str(tmp_path / "pkgs" / "rsgen-toy-latent-3")
    export.main(["--checkpoint", os.path.join(out + "3", "last.pt"), "--out", pkg3, "--autoencoder", ae_dir,
                 "--text-kind", "tiny", "--no-fp16"])
    with open(os.path.join(pkg3, "manifest.json")) as f:
        assert json.load(f)["architecture"]["extra_layers"] == [1, 0]
    r = generate(GenerationRequest(extent=(453000.0, 6233600.0, 453256.0, 6233856.0), crs="EPSG:32734", gsd=4.0,
                                   output=str(tmp_path / "toy3.tif"), model=pkg3, prompt="a forest", steps=2,
                                   guidance=1.0, sampler="ddim"), model_dirs=[tiny_latent_dir],
                 providers=["CPUExecutionProvider"])
    assert os.path.isfile(r.path)
    train.main(args[:2] + ["--out", out + "4", "--init-onnx", os.path.join(pkg3, "denoiser.onnx")] + args[4:])
    st4 = torch.load(os.path.join(out + "4", "last.pt"), map_location="cpu", weights_only=True)
    assert st4["config"] == st3["config"] and st4["step0"] == st3["step"]


def test_make_train_gpu_runs_at_toy_scale(toy_data, tmp_path, tiny_latent_dir):
    """`make train-gpu` (the one device call of docs/GPU.md) on the CPU: from a latent pack to the EMA weights in
    $OUT, which export to a latent package."""
    import subprocess
    import sys

    import torch

    from rsgen_qgis.training.captions import all_captions
    from rsgen_qgis.training.latent_data import encode_dataset

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pack = encode_dataset(toy_data, os.path.join(tiny_latent_dir, "taef2"), str(tmp_path / "latents.npz"),
                          limit=4)
    out = tmp_path / "out"
    (out / "cache").mkdir(parents=True)
    caps = all_captions()
    np.savez(out / "cache" / "caption_emb.npz", captions=np.array(caps),
             emb=np.random.default_rng(0).standard_normal((len(caps), 384)).astype(np.float32))
    p = subprocess.run(["make", "-s", "-C", root, "train-gpu", f"PY={sys.executable}", f"LATENT_PACK={pack}",
                        "GPU_MINUTES=0.01", f"OUT={out}"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    st = torch.load(out / "ema.pt", map_location="cpu", weights_only=True)
    assert st["step"] >= 1 and st["config"]["image_channels"] == 32 and st["config"]["tile"] == 32
    assert list(st["config"]["block_out_channels"]) == [96, 96, 144]  # LATENT_GPU_CHANNELS: the wider full-res level


def test_shards_join_into_the_whole_pack(toy_data, tmp_path, tiny_latent_dir):
    """Encoding side by side in shards (each a share of an evenly spread selection) gives, joined, the samples the
    whole run gives; packs made with other settings are refused, not mixed."""
    from rsgen_qgis.training.latent_data import encode_dataset, load_pack, spread

    ae_dir = os.path.join(tiny_latent_dir, "taef2")
    assert list(spread(10, 4)) == [0, 3, 6, 9] and list(spread(3, 0)) == [0, 1, 2] and list(spread(3, 5)) == [0, 1, 2]
    whole = load_pack(encode_dataset(toy_data, ae_dir, str(tmp_path / "whole.npz"), aid_limit=6))
    parts = [encode_dataset(toy_data, ae_dir, str(tmp_path / f"s{k}.npz"), aid_limit=6, shard=(k, 2)) for k in (0, 1)]
    joined = load_pack(",".join(parts))
    assert whole["aid_z"].shape[0] == 6 and joined["aid_z"].shape == whole["aid_z"].shape
    order = np.argsort(np.r_[np.arange(6)[0::2], np.arange(6)[1::2]])  # shard 0 took 0, 2, 4; shard 1 took 1, 3, 5
    np.testing.assert_array_equal(joined["aid_z"][order], whole["aid_z"])
    np.testing.assert_array_equal(joined["aid_labels"][order], whole["aid_labels"])
    np.testing.assert_array_equal(np.sort(joined["maps_z"].ravel()), np.sort(whole["maps_z"].ravel()))
    other = tmp_path / "other.npz"
    np.savez(other, **{**load_pack(parts[1]), "aid_gsd": np.float32(1.0)})
    with pytest.raises(ValueError, match="aid_gsd"):
        load_pack(f"{parts[0]},{other}")


def test_pack_groups_train_together_and_a_maps_only_group_never_serves_aid(toy_data, tmp_path, tiny_latent_dir):
    """A maps-only pack (aid_limit -1: e.g. the maps at 2.34 m beside the 1.17 m ones) joins training as a second
    group: maps batches come from both, AID batches only from the group that has AID; one pack alone and a list
    of that one pack give the same batches; groups made with another autoencoder are refused."""
    from rsgen_qgis.training.latent_data import LatentBatchMaker, check_groups, encode_dataset, load_pack

    ae_dir = os.path.join(tiny_latent_dir, "taef2")
    a = load_pack(encode_dataset(toy_data, ae_dir, str(tmp_path / "a.npz"), aid_limit=4))
    b = load_pack(encode_dataset(toy_data, ae_dir, str(tmp_path / "b.npz"), aid_limit=-1))
    assert b["aid_z"].shape == (0,) + a["aid_z"].shape[1:] and len(b["maps_z"]) == len(a["maps_z"])

    emb = _SameEmb({"x": np.ones(8, np.float32)})
    bm = LatentBatchMaker([a, b], emb, seed=1)
    seen = set()
    for _ in range(20):
        bm.batch(2, 4, "maps")
        seen.add(id(bm.pk))
    assert seen == {id(a), id(b)}
    for _ in range(10):
        bm.batch(2, 4, "aid")
        assert bm.pk is a
    one, listed = LatentBatchMaker(a, emb, seed=3), LatentBatchMaker([a], emb, seed=3)
    for src in ("aid", "maps", "aid"):
        x, y = one.batch(3, 4, src), listed.batch(3, 4, src)
        for k in x:
            assert np.array_equal(x[k].numpy(), y[k].numpy())
    check_groups([a, b])
    with pytest.raises(ValueError, match="autoencoder_sha256"):
        LatentBatchMaker([a, {**b, "autoencoder_sha256": np.array("0" * 64)}], emb)


def test_snr_plus_one_weight_keeps_high_noise_steps_and_matches_min_snr_at_low_noise():
    """--loss-weight snr-plus-one: on the x0 error the v loss weighted by it is min(SNR, 5) + 1 (min-SNR-5: min(SNR,
    5), nothing at pure noise); written back onto the v loss it is 1 wherever SNR <= 5."""
    import torch

    from rsgen_qgis.training.train import LOSS_WEIGHTS, alphas_cumprod, min_snr_weight, snr_plus_one_weight

    ac = alphas_cumprod()
    snr = ac / (1 - ac)
    w, w0 = snr_plus_one_weight(ac), min_snr_weight(ac)
    # x0 error weight = v weight * (SNR + 1), since x0 - x0_hat = sqrt(1 - a) (v_hat - v)
    assert torch.allclose(w * (snr + 1), torch.clamp(snr, max=5.0) + 1, rtol=1e-5)
    assert torch.allclose(w0 * (snr + 1), torch.clamp(snr, max=5.0), rtol=1e-5)
    high = snr <= 5
    assert torch.allclose(w[high], torch.ones_like(w[high]), atol=1e-6)
    assert float(w0[-1]) < 1e-3 and float(w[-1]) > 0.999      # t = 999: min-SNR drops it, snr-plus-one keeps it
    assert float(w[0]) < 0.01 and float(w[0]) == pytest.approx(6 / (float(snr[0]) + 1), rel=1e-4)
    assert LOSS_WEIGHTS["min-snr"] is min_snr_weight


def test_layout_use_diagnostic_at_toy_scale(toy_data, tmp_path, tiny_latent_dir):
    """training.diagnose layout-use: x0 errors with and without the layout from one checkpoint on the same noise,
    and the per-cell linear map's error beside the mean latent's."""
    import json

    from rsgen_qgis.training import diagnose, train
    from rsgen_qgis.training.latent_data import load_pack

    pack = _toy_pack_and_captions(toy_data, tmp_path, tiny_latent_dir)
    cache = tmp_path / "runs" / "cache"
    out = str(tmp_path / "runs" / "train")
    train.main(["--latents", pack, "--out", out, "--minutes", "0.03", "--channels", "8,16", "--attention", "0,1",
                "--tile", "8", "--batch", "2", "--threads", "1", "--save-every", "100"])
    report = tmp_path / "use.json"
    diagnose.main(["layout-use", "--checkpoint", os.path.join(out, "last.pt"), "--latents", pack, "--cache",
                   str(cache), "--n", "4", "--timesteps", "999,500", "--threads", "1", "--out", str(report)])
    r = json.loads(report.read_text())
    assert set(r["x0_error"]) == {"999", "500"} and r["tiles"] == 4 and r["latent_cells"] == 8
    for row in r["x0_error"].values():
        assert row["with_layout"] > 0 and row["without"] > 0
        assert row["gain"] == pytest.approx(1 - row["with_layout"] / row["without"])
    lin = r["pack"]
    assert lin["mean_latent"] > 0 and lin["linear_map"] > 0
    assert diagnose.linear_layout_gain(load_pack(pack))["linear_map"] == pytest.approx(lin["linear_map"])


def _flat_pack(n: int = 8, c: int = 4, cells: int = 10, seed: int = 0) -> dict:
    """A latent pack of AID scenes whose latents are constant over each scene (unit variance over the scenes):
    a 3 x 3 linear filter averages the noise of 9 cells away, per-element shrinkage cannot."""
    from rsgen_qgis.training.data import AID_GSD_150
    from rsgen_qgis.training.captions import CLASS_PROMPT

    rng = np.random.default_rng(seed)
    z = np.repeat(np.repeat(rng.standard_normal((n, c, 1, 1)), cells, 2), cells, 3).astype(np.float16)
    classes = np.array(sorted(CLASS_PROMPT))
    return {"aid_z": z, "aid_g": z.copy(), "aid_labels": np.arange(n) % len(classes), "aid_classes": classes,
            "maps_z": np.zeros((1, c, cells, cells), np.float16), "maps_g": np.zeros((1, c, cells, cells), np.float16),
            "maps_layout": np.zeros((1, 6, cells, cells), np.uint8), "maps_gsd": np.float32(2.34),
            "aid_gsd": np.float32(AID_GSD_150 * 150 / 144), "factor": np.int32(8)}


def test_vs_linear_diagnostic_scores_a_known_denoiser_and_fits_the_filter():
    """diagnose vs-linear: a predictor that is exactly per-element shrinkage scores exactly the shrinkage row, the
    3 x 3 filter beats it on spatially constant latents (it averages 9 noisy cells: about 9x less error at high
    noise), and the gain over the filter is 1 - model / linear."""
    from rsgen_qgis.training import diagnose
    from rsgen_qgis.training.captions import all_captions
    from rsgen_qgis.training.train import alphas_cumprod

    ac = alphas_cumprod().numpy().astype(np.float64)
    emb = {cap: np.zeros(8, np.float32) for cap in all_captions()}
    seen = []

    def shrink_v(xt, t, spatial, cond):
        seen.append((xt.shape, spatial.shape[1], cond.shape))
        a, s = np.sqrt(ac[int(t)]), np.sqrt(1 - ac[int(t)])
        x0 = xt * (a / (a * a + s * s))
        return ((a * xt - x0) / s).astype(np.float32)

    pack = _flat_pack(n=120, c=2)
    r = diagnose.vs_linear(shrink_v, pack, emb, n=24, timesteps=(200, 700), res=8, batch=10)
    assert r["crops"] == 24 and r["latent_cells"] == 8 and set(r["x0_error"]) == {"200", "700"}
    assert [sh[0][0] for sh in seen[:3]] == [10, 10, 4]  # batched as asked, every crop once per timestep
    for t, row in r["x0_error"].items():
        # float32 arithmetic on values of order 1: the two computations of the same shrinkage agree to ~1e-6
        assert row["model"] == pytest.approx(row["shrinkage"], rel=1e-4)
        assert row["gain_over_linear"] == pytest.approx(1 - row["model"] / row["linear_3x3"])
    high = r["x0_error"]["700"]
    assert high["alpha_bar"] == pytest.approx(ac[700])
    # at t = 700 the noise variance per cell is s^2/a^2 = 3.95 in x0 units: shrinkage's expected error is
    # 1/(1 + 1/3.95) = 0.80, the 3 x 3 mean's 1/(1 + 9/3.95) = 0.31 (ratio 0.38); the fitted filter (19 weights
    # from 24 crops) and 24 test crops of constant latents leave it well short of 0.7 either way
    assert high["linear_3x3"] < 0.7 * high["shrinkage"]
    with pytest.raises(ValueError):
        diagnose.vs_linear(shrink_v, _flat_pack(n=1), emb, n=2, res=8)


def test_vs_linear_diagnostic_from_a_checkpoint_and_a_graph(toy_data, tmp_path, tiny_latent_dir):
    """diagnose vs-linear through its command line, on a toy training run's checkpoint and on the tiny latent
    package's graph: the same rows, finite errors, the source recorded."""
    import json

    from rsgen_qgis.training import diagnose, train
    from rsgen_qgis.training.captions import all_captions
    from rsgen_qgis.training.latent_data import encode_dataset

    pack = encode_dataset(toy_data, os.path.join(tiny_latent_dir, "taef2"), str(tmp_path / "runs" / "latents.npz"))
    cache = tmp_path / "runs" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    caps = all_captions()
    graph = os.path.join(tiny_latent_dir, "rsgen-tiny-latent", "denoiser.onnx")
    with open(os.path.join(tiny_latent_dir, "rsgen-tiny-latent", "manifest.json")) as f:
        width = json.load(f)["conditions"]["cond_layout"]["text"][1]  # the tiny text encoder's embedding
    np.savez(cache / "caption_emb.npz", captions=np.array(caps),
             emb=np.random.default_rng(0).standard_normal((len(caps), width)).astype(np.float32))
    out = str(tmp_path / "runs" / "train")
    train.main(["--latents", pack, "--out", out, "--minutes", "0.03", "--channels", "8,16", "--attention", "0,1",
                "--tile", "8", "--batch", "2", "--threads", "1", "--save-every", "100"])
    for who, src in (("--checkpoint", os.path.join(out, "last.pt")),
                     ("--onnx", graph)):
        report = tmp_path / f"vs{who}.json"
        diagnose.main(["vs-linear", who, src, "--latents", pack, "--cache", str(cache), "--n", "6",
                       "--timesteps", "300,900", "--threads", "1", "--out", str(report)])
        r = json.loads(report.read_text())
        assert r[who.lstrip("-")] == src and r["pack"] == pack and set(r["x0_error"]) == {"300", "900"}
        for row in r["x0_error"].values():
            assert all(np.isfinite(row[k]) and row[k] > 0 for k in ("model", "shrinkage", "linear_3x3"))
    np.savez(cache / "caption_emb.npz", captions=np.array(caps), emb=np.zeros((len(caps), width + 5), np.float32))
    with pytest.raises(ValueError, match="condition vector"):
        diagnose.main(["vs-linear", "--onnx", graph, "--latents", pack, "--cache", str(cache), "--n", "2",
                       "--timesteps", "300", "--threads", "1"])


def test_latent_guidance_distillation_from_a_package_and_again_from_its_student(toy_data, tmp_path, tiny_latent_dir):
    """distill.py on latent packs: the teacher is a committed package (its fp32 graph and manifest), the student
    starts as the teacher at any scale, its package takes one evaluation a step, its steps and time go on from the
    teacher's; a guidance-distilled package trained on (train.py --init-onnx: --guidance-input from its manifest) distils
    again, the
    student starting as a copy of it."""
    import torch

    from rsgen_qgis.core.engine.blocks import evaluations_per_window
    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.request import GenerationRequest
    from rsgen_qgis.training import distill, export, train
    from rsgen_qgis.training.captions import all_captions
    from rsgen_qgis.training.latent_data import encode_dataset

    ae_dir = os.path.join(tiny_latent_dir, "taef2")
    pack = encode_dataset(toy_data, ae_dir, str(tmp_path / "runs" / "latents.npz"), aid_limit=4)
    cache = tmp_path / "runs" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    caps = all_captions()
    np.savez(cache / "caption_emb.npz", captions=np.array(caps),
             emb=np.random.default_rng(0).standard_normal((len(caps), 32)).astype(np.float32))
    runs = tmp_path / "runs"
    small = ["--minutes", "0.02", "--batch", "2", "--threads", "1", "--save-every", "100"]
    train.main(["--latents", pack, "--out", str(runs / "t"), "--channels", "8,16", "--attention", "0,1",
                "--tile", "8"] + small)
    ex = ["--autoencoder", ae_dir, "--text-kind", "tiny", "--no-fp16"]
    teacher_pkg = str(tmp_path / "pkgs" / "teacher")
    export.main(["--checkpoint", str(runs / "t" / "last.pt"), "--out", teacher_pkg] + ex)
    with open(os.path.join(teacher_pkg, "manifest.json")) as f:
        t_rec = json.load(f)["training"]

    teacher, rec = distill.load_teacher(teacher_pkg)
    student = distill.student_from(teacher).eval()
    torch.manual_seed(0)
    x, t = torch.randn(2, 32, 8, 8), torch.tensor([5.0, 900.0])
    sp, cond = torch.randn(2, teacher.cfg.spatial_channels, 8, 8), torch.randn(2, teacher.cfg.cond_dim)
    with torch.no_grad():
        ref = teacher.eval()(x, t, sp, cond)
        moved = float((student(x, t, sp, distill.with_scale(cond, 4.0)) - ref).abs().max())
    assert rec["step"] == t_rec["steps"] and moved < 1e-3 * max(1.0, float(ref.abs().max()))

    distill.main(["--latents", pack, "--teacher", teacher_pkg, "--out", str(runs / "d"), "--low-res-share", "0",
                  "--loss-weight", "snr-plus-one"] + small)
    st = torch.load(runs / "d" / "last.pt", map_location="cpu", weights_only=True)
    n = st["distillation"]["steps"]
    assert n >= 1 and st["step"] == t_rec["steps"] + n and st["config"]["guidance_input"]
    student_pkg = str(tmp_path / "pkgs" / "student")
    export.main(["--checkpoint", str(runs / "d" / "last.pt"), "--out", student_pkg] + ex)
    with open(os.path.join(student_pkg, "manifest.json")) as f:
        m = json.load(f)
    assert m["training"]["steps"] == st["step"] and m["training"]["distillation"]["steps"] == n
    assert m["training"]["wall_s"] == round(st["elapsed_s"] + t_rec["wall_s"])
    req = GenerationRequest(extent=(453000.0, 6233600.0, 453256.0, 6233856.0), crs="EPSG:32734", gsd=4.0,
                            output=str(tmp_path / "d.tif"), model=student_pkg, prompt="a forest", steps=2,
                            guidance=3.0, sampler="ddim")
    assert evaluations_per_window(req, m) == 1
    assert os.path.isfile(generate(req, model_dirs=[tiny_latent_dir], providers=["CPUExecutionProvider"]).path)

    # the next instalment: trained on at w = 1 from the student's graph, then distilled again from that package
    # (--guidance-input follows from the package's manifest)
    train.main(["--latents", pack, "--out", str(runs / "t2"), "--channels", "8,16", "--attention", "0,1",
                "--tile", "8", "--init-onnx", os.path.join(student_pkg, "denoiser.onnx")] + small)
    again_pkg = str(tmp_path / "pkgs" / "again")
    export.main(["--checkpoint", str(runs / "t2" / "last.pt"), "--out", again_pkg] + ex)
    teacher2, _ = distill.load_teacher(os.path.join(again_pkg, "denoiser.onnx"))
    assert teacher2.cfg.guidance_input
    distill.main(["--latents", pack, "--teacher", again_pkg, "--out", str(runs / "d2"), "--low-res-share", "0"]
                 + small)
    st2 = torch.load(runs / "d2" / "last.pt", map_location="cpu", weights_only=True)
    assert st2["config"] == teacher2.cfg.to_dict() and st2["distillation"]["teacher_step"] > st["step"]
    # the first distillation is kept in the recipe of the second
    assert st2["prior_phases"] == [{"phase": "distillation", **m["training"]["distillation"]}]


def test_int8_calibration_of_a_latent_package_runs_through_the_engine(toy_data, tmp_path, tiny_latent_dir):
    """quantize.latent_feeds: every denoiser feed of the engine's runs on training material (prompts at three
    scales, layouts, guides, inpainting holes), the package's default steps each; add_int8 takes them."""
    import shutil

    from rsgen_qgis.core.runtime.models import load
    from rsgen_qgis.training.quantize import add_int8, latent_feeds

    for name in ("taef2", "rsgen-tiny-latent"):
        shutil.copytree(os.path.join(tiny_latent_dir, name), tmp_path / name)
    pkg = str(tmp_path / "rsgen-tiny-latent")
    with open(os.path.join(pkg, "manifest.json")) as f:
        steps = json.load(f)["defaults"]["steps"]
    feeds = latent_feeds(pkg, toy_data, str(tmp_path / "cache"), n_prompts=3, n_layouts=1, n_guides=1, n_holes=1)
    assert len(feeds) == 6 * steps  # one call a step (the tile is one window)
    # prompt and layout runs: the conditional and unconditional branches in one batch; guide and hole runs have
    # nothing guidance drops, so one branch
    assert [f["sample"].shape[0] for f in feeds] == [2] * 4 * steps + [1] * 2 * steps
    assert all(f["sample"].shape[1] == 32 for f in feeds)
    lay = [f for f in feeds if f["spatial"][:, :6].any()]
    assert len(lay) == steps  # the layout run's feeds carry its layout (the conditional branch)
    man = add_int8(pkg, feeds)
    assert man["graphs"]["denoiser"]["int8_file"] == "denoiser_int8.onnx"
    assert load(pkg, [str(tmp_path)], ["CPUExecutionProvider"]).variant == "int8"


def test_progressive_distillation_of_a_latent_package_exports_a_half_step_ddim_package(toy_data, tmp_path,
                                                                                      tiny_latent_dir):
    """progressive.py from a guidance-input package: steps and time go on from the teacher's, the exported
    package samples with DDIM at half the teacher's steps by default, and runs."""
    import torch

    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.request import GenerationRequest
    from rsgen_qgis.training import export, train
    from rsgen_qgis.training.captions import all_captions
    from rsgen_qgis.training.latent_data import encode_dataset
    from rsgen_qgis.training import progressive as pd

    ae_dir = os.path.join(tiny_latent_dir, "taef2")
    pack = encode_dataset(toy_data, ae_dir, str(tmp_path / "runs" / "latents.npz"), aid_limit=4)
    cache = tmp_path / "runs" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    caps = all_captions()
    np.savez(cache / "caption_emb.npz", captions=np.array(caps),
             emb=np.random.default_rng(0).standard_normal((len(caps), 32)).astype(np.float32))
    runs = tmp_path / "runs"
    small = ["--minutes", "0.02", "--batch", "2", "--threads", "1", "--save-every", "100"]
    train.main(["--latents", pack, "--out", str(runs / "t"), "--channels", "8,16", "--attention", "0,1",
                "--tile", "8", "--guidance-input"] + small)
    ex = ["--autoencoder", ae_dir, "--text-kind", "tiny", "--no-fp16"]
    teacher_pkg = str(tmp_path / "pkgs" / "teacher")
    export.main(["--checkpoint", str(runs / "t" / "last.pt"), "--out", teacher_pkg] + ex)
    with open(os.path.join(teacher_pkg, "manifest.json")) as f:
        t_rec = json.load(f)["training"]
    pd.main(["--latents", pack, "--teacher", teacher_pkg, "--teacher-steps", "8", "--out", str(runs / "p")] + small)
    st = torch.load(runs / "p" / "last.pt", map_location="cpu", weights_only=True)
    n = st["progressive"]["steps"]
    assert n >= 1 and st["step"] == t_rec["steps"] + n and st["config"]["guidance_input"]
    assert st["progressive"]["sampling_steps"] == 4 and st["progressive"]["teacher_sampling_steps"] == 8
    # a second instalment goes on from last.pt (steps and time add up); another teacher's steps are refused
    with pytest.raises(SystemExit, match="--resume"):
        pd.main(["--latents", pack, "--teacher", teacher_pkg, "--teacher-steps", "4", "--out", str(runs / "p"),
                 "--resume"] + small)
    pd.main(["--latents", pack, "--teacher", teacher_pkg, "--teacher-steps", "8", "--out", str(runs / "p"),
             "--resume"] + small[:1] + ["0.1"] + small[2:])
    st2 = torch.load(runs / "p" / "last.pt", map_location="cpu", weights_only=True)
    assert st2["progressive"]["steps"] > n and st2["step"] == t_rec["steps"] + st2["progressive"]["steps"]
    assert st2["progressive"]["wall_s"] >= st["progressive"]["wall_s"]
    n = st2["progressive"]["steps"]
    pkg = str(tmp_path / "pkgs" / "student")
    export.main(["--checkpoint", str(runs / "p" / "last.pt"), "--out", pkg] + ex)
    with open(os.path.join(pkg, "manifest.json")) as f:
        m = json.load(f)
    assert m["defaults"]["steps"] == 4 and m["defaults"]["sampler"] == "ddim" and m["defaults"]["guidance"] == 3.0
    assert m["training"]["progressive_distillation"]["steps"] == n
    req = GenerationRequest(extent=(453000.0, 6233600.0, 453256.0, 6233856.0), crs="EPSG:32734", gsd=4.0,
                            output=str(tmp_path / "p.tif"), model=pkg, prompt="a forest")
    r = generate(req, model_dirs=[tiny_latent_dir], providers=["CPUExecutionProvider"])
    assert os.path.isfile(r.path)
    # the student distilled again, from its own default grid (4 steps -> 2) without being told; the first round is
    # kept in the recipe as a prior phase; a teacher grid that cannot be halved is refused
    assert pd.teacher_default_steps(pkg) == 4 and pd.teacher_default_steps(str(runs / "p" / "last.pt")) == 20
    with pytest.raises(SystemExit):
        pd.main(["--latents", pack, "--teacher", pkg, "--teacher-steps", "5", "--out", str(runs / "p3")] + small)
    pd.main(["--latents", pack, "--teacher", pkg, "--out", str(runs / "p2")] + small)
    pkg2 = str(tmp_path / "pkgs" / "student2")
    export.main(["--checkpoint", str(runs / "p2" / "last.pt"), "--out", pkg2] + ex)
    with open(os.path.join(pkg2, "manifest.json")) as f:
        m2 = json.load(f)
    assert m2["defaults"]["steps"] == 2 and m2["training"]["progressive_distillation"]["teacher_sampling_steps"] == 4
    assert m2["training"]["prior_phases"] == [{"phase": "progressive_distillation",
                                               **m["training"]["progressive_distillation"]}]


def test_package_shape_takes_the_graphs_widths_and_ignores_a_malformed_record():
    """train.py --init-onnx: the manifest's architecture sets widths, attention and layers; a record that is
    missing or malformed (strings, booleans, a wrong length) leaves the command line's."""
    from argparse import Namespace

    from rsgen_qgis.training.train import package_shape

    def run(arch):
        a = Namespace(channels="48,96,144", attention="0,0,1", layers_per_block=1)
        package_shape(a, arch)
        return a.channels, a.attention, a.layers_per_block

    assert run({"block_out_channels": [96, 96, 144], "attention_levels": [False, True, True],
                "layers_per_block": 2}) == ("96,96,144", "0,1,1", 2)
    assert run({"block_out_channels": [96, 96], "attention_levels": [False, True, True]}) == ("96,96", "0,0,1", 1)
    for bad in ({}, {"block_out_channels": "96,96"}, {"block_out_channels": [96, True]},
                {"block_out_channels": [96, -1]}, {"block_out_channels": []}):
        assert run(bad) == ("48,96,144", "0,0,1", 1)
    assert run({"block_out_channels": [8, 16], "attention_levels": [0, 1], "layers_per_block": "2"}) == \
        ("8,16", "0,0,1", 1)


def test_precision_auto_takes_bf16_only_where_the_device_has_it():
    """bf16 autocast on a CPU without native bfloat16 runs ATen's reference convolutions (measured 38-47 s for a
    forward that takes about 1 s in float32), so auto falls back to fp32 there; what is asked explicitly is kept."""
    from rsgen_qgis.training.train import cpu_has_bf16, resolve_precision

    assert resolve_precision("auto", False) == "fp32"
    assert resolve_precision("auto", True) == "bf16"
    for native in (False, True):
        assert resolve_precision("fp32", native) == "fp32"
        assert resolve_precision("bf16", native) == "bf16"
    assert isinstance(cpu_has_bf16(), bool)


def test_bf16_training_keeps_float32_weights_and_follows_the_float32_forward(toy_data, tmp_path, tiny_latent_dir):
    """--precision bf16 (train-gpu's default; train-latent's through auto where the CPU has it): the forward pass
    runs under bfloat16 autocast, the weights, optimizer state and EMA stay float32, and the checkpoint exports as
    any other."""
    import torch

    from rsgen_qgis.training import export, train
    from rsgen_qgis.training.captions import all_captions
    from rsgen_qgis.training.latent_data import encode_dataset
    from rsgen_qgis.training.model import Denoiser, DenoiserConfig

    # bfloat16 keeps 8 significant bits: each rounding moves a value by at most 2^-9 (0.2 %) of itself. Through
    # this toy UNet's few convolutions, norms and its attention the rounding errors add up to about 1 % of the
    # output (1-3.5 % on the shipped 96,96,144 UNet, measured on held-out latents at t = 50-900, where the v loss
    # moved by under 1e-4 relative); 5 % bounds that, and a forward that is not under autocast differs by 0.
    torch.manual_seed(0)
    cfg = DenoiserConfig(image_channels=4, spatial_channels=3, cond_dim=6, block_out_channels=(8, 16),
                         attention_levels=(False, True), tile=8, norm_num_groups=2, attention_head_dim=8)
    m = Denoiser(cfg).eval()
    x, sp, c = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 6)
    t = torch.tensor([10.0, 900.0])
    with torch.no_grad():
        p32 = m(x, t, sp, c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            p16 = m(x, t, sp, c).float()
    rel = float((p16 - p32).norm() / p32.norm())
    assert 0 < rel < 0.05, rel

    pack = encode_dataset(toy_data, os.path.join(tiny_latent_dir, "taef2"), str(tmp_path / "runs" / "latents.npz"),
                          limit=4)
    cache = tmp_path / "runs" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    caps = all_captions()
    np.savez(cache / "caption_emb.npz", captions=np.array(caps),
             emb=np.random.default_rng(0).standard_normal((len(caps), 32)).astype(np.float32))
    out = tmp_path / "runs" / "train"
    train.main(["--latents", pack, "--out", str(out), "--minutes", "0.03", "--channels", "8,16", "--attention", "0,1",
                "--tile", "8", "--batch", "2", "--threads", "1", "--save-every", "100", "--precision", "bf16"])
    st = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert st["step"] >= 1 and st["args"]["precision"] == "bf16"
    for key in ("model", "ema"):
        for name, w in st[key].items():
            assert w.dtype == torch.float32 and bool(torch.isfinite(w).all()), (key, name)
    assert any(s.get("exp_avg") is not None and s["exp_avg"].dtype == torch.float32 for s in st["opt"]["state"].values())
    assert json.loads((out / "summary.json").read_text())["args"]["precision"] == "bf16"
    # --precision auto (the Makefile's train-latent default): bf16 only where this CPU has it natively, and the
    # record says what was asked and what ran
    auto_out = tmp_path / "runs" / "train-auto"
    train.main(["--latents", pack, "--out", str(auto_out), "--minutes", "0.02", "--channels", "8,16", "--attention",
                "0,1", "--tile", "8", "--batch", "2", "--threads", "1", "--save-every", "100", "--precision", "auto"])
    args = json.loads((auto_out / "summary.json").read_text())["args"]
    assert args["precision_requested"] == "auto"
    assert args["precision"] == ("bf16" if train.cpu_has_bf16() else "fp32")
    pkg = str(tmp_path / "pkg")
    export.main(["--checkpoint", str(out / "last.pt"), "--out", pkg, "--autoencoder",
                 os.path.join(tiny_latent_dir, "taef2"), "--text-kind", "tiny", "--no-fp16"])
    assert os.path.isfile(os.path.join(pkg, "denoiser.onnx"))


def test_adversarial_fine_tuning_at_toy_scale_checkpoints_and_resumes_its_critic(toy_data, tmp_path, tiny_latent_dir):
    """train.py --adv-weight: the critic trains beside the denoiser, its state is in the checkpoint, a resumed run
    goes on with it; the term needs latents."""
    import torch

    from rsgen_qgis.training import train

    pack = _toy_pack_and_captions(toy_data, tmp_path, tiny_latent_dir)
    out = str(tmp_path / "runs" / "train")
    args = ["--latents", pack, "--out", out, "--channels", "8,16", "--attention", "0,1", "--tile", "8",
            "--batch", "2", "--threads", "1", "--save-every", "100", "--adv-weight", "0.5", "--adv-warmup", "0",
            "--adv-t-max", "1000"]
    train.main(args + ["--minutes", "0.03"])
    st = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    first = st["adversary"]["steps"]
    assert first >= 1 and first == st["step"]  # t_max 1000: every step has rows for the critic
    assert any(k.startswith("body.") for k in st["adversary"]["critic"])
    train.main(args + ["--minutes", "0.2", "--resume"])  # its time budget counts on from the first run's
    st2 = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    assert st2["adversary"]["steps"] > first and st2["adversary"]["steps"] == st2["step"]
    with pytest.raises(SystemExit):
        train.main(["--data", toy_data, "--out", out + "px", "--adv-weight", "0.5"])


def test_latent_batches_are_crops_as_encoded_unless_turns_are_asked_for(toy_data, tmp_path, tiny_latent_dir):
    """TAEF2's latents do not commute with turns, so by default every AID and maps row is a crop of a latent exactly
    as the autoencoder encoded it; turns=True (train.py --latent-turns) flips and turns them as before."""
    from rsgen_qgis.training.latent_data import LatentBatchMaker, encode_dataset, load_pack

    p = load_pack(encode_dataset(toy_data, os.path.join(tiny_latent_dir, "taef2"), str(tmp_path / "l.npz")))

    def crops(z, res):  # every res x res window of every latent in z, as bytes
        return {np.ascontiguousarray(z[i, :, y:y + res, x:x + res], np.float32).tobytes()
                for i in range(len(z)) for y in range(z.shape[-2] - res + 1) for x in range(z.shape[-1] - res + 1)}

    for turns in (False, True):
        bm = LatentBatchMaker(p, _SameEmb(x=np.ones(8, np.float32)), seed=4, turns=turns)
        found = []
        for src, key, res in (("aid", "aid_z", 16), ("maps", "maps_z", 16)) * 6:
            windows = crops(p[key], res)
            x0 = bm.batch(3, res, src)["x0"].numpy()
            found += [np.ascontiguousarray(r).tobytes() in windows for r in x0]
        if turns:
            assert not all(found)  # 7 of 8 draws are turned or flipped
        else:
            assert all(found)


def test_dihedral_copies_are_encoded_from_the_turned_images(toy_data, tmp_path, tiny_latent_dir):
    """latent_data encode --copies: each image and its layout flipped / turned as images, then encoded, so the pack's
    extra samples are latents the autoencoder makes (not turned latents)."""
    from rsgen_qgis.training.data import load_aid
    from rsgen_qgis.training.latent_data import (AID_CROP, DIHEDRAL, dihedral_copies, encode_dataset, encode_images,
                                                 load_pack, open_autoencoder)

    ae_dir = os.path.join(tiny_latent_dir, "taef2")
    one = load_pack(encode_dataset(toy_data, ae_dir, str(tmp_path / "one.npz")))
    three = load_pack(encode_dataset(toy_data, ae_dir, str(tmp_path / "three.npz"), copies=3))
    n, m = len(one["aid_z"]), len(one["maps_z"])
    assert three["aid_z"].shape == (3 * n,) + one["aid_z"].shape[1:] and len(three["maps_z"]) == 3 * m
    assert np.array_equal(three["aid_labels"], np.tile(one["aid_labels"], 3))
    assert np.array_equal(three["aid_z"][:n], one["aid_z"]) and np.array_equal(three["maps_z"][:m], one["maps_z"])
    # copy 1 is the left-right flip: the encoded flipped scenes, by the same code path as the pack's
    ae = open_autoencoder(ae_dir)
    ae.tile = 1 << 12
    aid = load_aid(toy_data, "train", str(tmp_path / "cache"))
    flipped = encode_images(ae, np.ascontiguousarray(aid["images"][:, :, ::-1]), AID_CROP, log=lambda *_: None)
    assert np.array_equal(three["aid_z"][n:2 * n], flipped["z"])
    # layouts turn with their aerials: copy 2 (a 90-degree turn) of the layout fractions is the turned copy 0
    assert DIHEDRAL[2] == (1, False)
    assert np.array_equal(three["maps_layout"][2 * m:], np.rot90(one["maps_layout"], 1, axes=(2, 3)))
    x = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    assert np.array_equal(dihedral_copies(x, 2)[2:], x[:, :, ::-1])
    with pytest.raises(ValueError, match="copies"):
        dihedral_copies(x, 9)
