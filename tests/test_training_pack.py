"""The training pack: prepared data -> one compact file -> the training cache that train.py reads."""
import numpy as np
import pytest

pytest.importorskip("PIL")
from rsgen_qgis.training import pack as packmod  # noqa: E402
from rsgen_qgis.training.data import load_aid, load_maps  # noqa: E402


def _smooth(rng, n, size):
    """Images with structure (WebP-friendly), not white noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(1, 6, 3)
        img = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], -1)
        out.append(((img + 1) * 127.5).astype(np.uint8))
    return np.stack(out)


def test_pack_unpack_roundtrip_feeds_the_loaders(tmp_path):
    rng = np.random.default_rng(0)
    aid = {"images": _smooth(rng, 6, 150), "labels": np.array([0, 0, 1, 1, 2, 2]), "classes": ["A", "B", "C"]}
    maps = {"aerial": _smooth(rng, 3, 256), "layout": rng.integers(0, 6, (3, 256, 256)).astype(np.uint8)}
    caps = {"a farm": np.ones(4, np.float32), "a forest": np.arange(4, dtype=np.float32)}
    path = str(tmp_path / "train.npz")
    sizes = packmod.pack(aid, maps, caps, path, quality=90)
    assert sizes["total"] < aid["images"].nbytes + maps["aerial"].nbytes  # it is compact
    cache = str(tmp_path / "cache")
    assert packmod.unpack(path, cache) == {"aid": 6, "maps": 3, "captions": 2}
    got_aid = load_aid("/nonexistent", "train", cache)  # read from the cache only
    got_maps = load_maps("/nonexistent", "train", cache)
    assert got_aid["classes"] == ["A", "B", "C"] and list(got_aid["labels"]) == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(got_maps["layout"], maps["layout"])  # layouts are lossless
    for got, ref in ((got_aid["images"], aid["images"]), (got_maps["aerial"], maps["aerial"])):
        assert got.shape == ref.shape and got.dtype == np.uint8
        mse = np.mean((got.astype(float) - ref) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 30  # WebP at q90 on smooth images
    z = np.load(str(tmp_path / "cache" / "caption_emb.npz"))
    assert list(z["captions"]) == ["a farm", "a forest"] and np.array_equal(z["emb"][1], np.arange(4))


def test_pack_in_parts_roundtrip_and_incomplete_set(tmp_path):
    """--max-part-mib: parts under the limit, any part (or the original name) unpacks the whole set; a missing
    part is named."""
    import os

    rng = np.random.default_rng(2)
    aid = {"images": rng.integers(0, 256, (12, 150, 150, 3), dtype=np.uint8), "labels": np.arange(12) % 3,
           "classes": ["A", "B", "C"]}
    maps = {"aerial": rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8),
            "layout": rng.integers(0, 6, (4, 256, 256)).astype(np.uint8)}
    caps = {"a farm": np.ones(4, np.float32)}
    path = str(tmp_path / "train.npz")
    one = packmod.pack(aid, maps, caps, str(tmp_path / "whole.npz"), quality=90)
    limit = 200 * 1024
    sizes = packmod.pack(aid, maps, caps, path, quality=90, max_part_bytes=limit)
    n = sizes["parts"]
    parts = [packmod.part_name(path, k, n) for k in range(1, n + 1)]
    assert n >= 3 and all(os.path.getsize(p) <= limit for p in parts) and not os.path.exists(path)
    for name in (path, parts[-1]):
        cache = str(tmp_path / f"cache{len(name)}")
        assert packmod.unpack(name, cache) == {"aid": 12, "maps": 4, "captions": 1}
        got_aid, got_maps = load_aid("/nonexistent", "train", cache), load_maps("/nonexistent", "train", cache)
        assert list(got_aid["labels"]) == list(aid["labels"]) and np.array_equal(got_maps["layout"], maps["layout"])
        ref = str(tmp_path / "ref")
        packmod.unpack(str(tmp_path / "whole.npz"), ref)
        assert np.array_equal(got_aid["images"], load_aid("/x", "train", ref)["images"])  # same bytes as one file
    assert one["parts"] == 1
    os.remove(parts[1])
    with pytest.raises(ValueError, match=f"incomplete: {os.path.basename(parts[1])} missing"):
        packmod.unpack(parts[0], str(tmp_path / "c2"))


def test_unpack_refuses_another_file(tmp_path):
    path = str(tmp_path / "x.npz")
    np.savez(path, format=np.array("something-else"))
    with pytest.raises(ValueError, match="not a training pack"):
        packmod.unpack(path, str(tmp_path / "cache"))


def test_fine_tuning_phase_starts_from_the_init_checkpoint(tmp_path):
    """train.py --init: phase 2 starts from phase 1's EMA weights (with lr 0 they come out unchanged), and a
    checkpoint of another shape is refused."""
    torch = pytest.importorskip("torch")
    from rsgen_qgis.training import train
    from rsgen_qgis.training.captions import all_captions

    rng = np.random.default_rng(1)
    aid = {"images": _smooth(rng, 6, 150), "labels": np.array([0, 0, 1, 1, 2, 2]),
           "classes": ["Farmland", "Forest", "Beach"]}
    maps = {"aerial": _smooth(rng, 2, 256), "layout": rng.integers(0, 6, (2, 256, 256)).astype(np.uint8)}
    caps = {c: rng.standard_normal(384).astype(np.float32) for c in all_captions()}
    path = str(tmp_path / "train.npz")
    packmod.pack(aid, maps, caps, path, quality=90)
    common = ["--pack", path, "--channels", "16,32", "--batch", "2", "--threads", "1", "--minutes", "0.02"]
    train.main(common + ["--out", str(tmp_path / "p1")])
    p1 = torch.load(str(tmp_path / "p1" / "last.pt"), weights_only=True)
    assert p1["step"] > 0
    train.main(common + ["--out", str(tmp_path / "p2"), "--init", str(tmp_path / "p1" / "last.pt"),
                         "--lr", "0", "--lr-min", "0", "--lr-schedule", "cosine"])
    p2 = torch.load(str(tmp_path / "p2" / "last.pt"), weights_only=True)  # plain floats: loads weights-only
    assert p2["step"] > 0
    for k, v in p1["ema"].items():
        assert torch.equal(p2["ema"][k], v), k
    with pytest.raises(SystemExit, match="differs"):
        train.main(["--pack", path, "--channels", "16,64", "--batch", "2", "--threads", "1", "--minutes", "0.02",
                    "--out", str(tmp_path / "p3"), "--init", str(tmp_path / "p1" / "last.pt")])
