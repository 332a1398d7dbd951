"""tools/bench_latent.py's child run: what make bench measures for one large area, on the tiny latent package."""

import json
import os


def test_large_area_child_writes_its_figures_and_the_moved_origins_and_leaves_no_file(tiny_latent_dir, tmp_path,
                                                                                    monkeypatch):
    """One area twice in the process, then moved over the block grid (n x n origins, all writing to the same
    output path): every figure is written and no GeoTIFF is left behind (a run of 2026-12-05 failed here)."""
    import bench_latent  # tools/bench_latent.py

    made = []
    real_mkdtemp = bench_latent.tempfile.mkdtemp

    def mkdtemp():
        made.append(real_mkdtemp(dir=str(tmp_path)))
        return made[-1]

    monkeypatch.setattr(bench_latent.tempfile, "mkdtemp", mkdtemp)
    out = str(tmp_path / "child.json")
    model = os.path.join(tiny_latent_dir, "rsgen-tiny-latent")
    bench_latent.large_child(model, km2=0.04, gsd=2.0, steps=2, out_json=out, aligned=2)
    with open(out) as f:
        r = json.load(f)
    assert r["px"] == [100, 100] and r["steps"] == 2 and r["blocks"] >= 1
    assert r["seconds"] > 0 and r["mpx_per_s_per_core"] > 0 and r["peak_rss_mb"] > 0
    al = r["alignments"]
    assert al["origins"] == 4 and len(al["runs"]) == 4
    assert [run["offset_m"] for run in al["runs"]] == [[0.0, 0.0], [al["pitch_m"] / 2, 0.0], [0.0, al["pitch_m"] / 2],
                                                       [al["pitch_m"] / 2, al["pitch_m"] / 2]]
    assert min(run["blocks"] for run in al["runs"]) >= 1
    assert al["blocks_mean"] == sum(run["blocks"] for run in al["runs"]) / 4
    assert made and all(os.listdir(d) == [] for d in made)
