"""Execution providers: TensorRT -> CUDA -> CPU by availability and the user's setting; TensorRT options carry
the engine/timing cache folder and explicit shape profiles (so a pan reuses engines)."""
import os

import onnxruntime
import pytest

from rsgen_qgis.core.runtime import providers
from rsgen_qgis.core.errors import ParameterError

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("have, pref, want", [
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    (ALL, "auto", ALL),
    (ALL, "cuda", ALL[1:]),
    (ALL, "cpu", ["CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu", ["CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    (["CPUExecutionProvider"], "tensorrt", ["CPUExecutionProvider"]),
    (["CPUExecutionProvider"], "auto", ["CPUExecutionProvider"]),
    (["AzureExecutionProvider", "CPUExecutionProvider"], "auto", ["CPUExecutionProvider"]),
])
def test_fallback_order(monkeypatch, have, pref, want):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(have))
    assert providers.choose(pref) == want


def test_unknown_preference():
    with pytest.raises(ParameterError, match="directml"):
        providers.choose("directml")


def test_this_machine_runs_on_cpu_at_least():
    assert providers.choose("auto")[-1] == "CPUExecutionProvider"


def test_tensorrt_options_have_caches_and_profiles(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = {"sample": {"shape": ["batch", 4, "height", "width"]}, "timestep": {"shape": ["batch"]},
            "encoder_hidden_states": {"shape": ["batch", "sequence", 768]},
            "down_res_3": {"shape": ["batch", 320, "height/2", "width/2"]}}
    dims = [{"batch": b, "height": 64, "width": 64, "sequence": 77} for b in (1, 8, 16)]
    prof = providers.shape_profile(spec, *dims)
    assert prof["trt_profile_min_shapes"] == ("sample:1x4x64x64,timestep:1,encoder_hidden_states:1x77x768,"
                                              "down_res_3:1x320x32x32")
    assert prof["trt_profile_opt_shapes"].startswith("sample:8x4x64x64,")
    assert prof["trt_profile_max_shapes"].endswith("down_res_3:16x320x32x32")
    opts = providers.with_options(ALL, prof)
    name, trt = opts[0]
    cache = os.path.join(str(tmp_path), "rsgen_qgis", "trt")
    assert name == "TensorrtExecutionProvider" and os.path.isdir(cache)
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"] == cache
    assert trt["trt_timing_cache_enable"] and trt["trt_timing_cache_path"] == cache
    assert trt["trt_fp16_enable"] is True
    for k in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
        assert trt[k] == prof[k]
    assert opts[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_profile_with_an_unknown_dimension_is_left_to_tensorrt():
    assert providers.shape_profile({"x": {"shape": ["batch", "frames"]}}, {"batch": 1}, {"batch": 2},
                                   {"batch": 4}) == {}


def test_cache_dir_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert providers.cache_dir() == os.path.join(str(tmp_path), ".cache", "rsgen_qgis", "trt")


def test_pixel_model_gets_a_profile_and_reports_the_provider(tiny_model_dir, monkeypatch, caplog):
    """The provider actually used is returned (and logged); a TensorRT request on this CPU-only build falls
    back, with the profile built from the manifest (batch 1..16 at the model's tile)."""
    import logging

    from rsgen_qgis.core.runtime import models

    seen = {}
    real = providers.with_options

    def spy(chosen, profile=None, fp16=True):
        seen["profile"] = profile
        return real(chosen, profile, fp16)

    monkeypatch.setattr(providers, "with_options", spy)
    models._cache.clear()
    with caplog.at_level(logging.INFO, logger="rsgen_qgis"):
        m = models.load("rsgen-tiny", [tiny_model_dir], providers=["CPUExecutionProvider"])
    assert m.provider == "CPUExecutionProvider"
    assert "runs on CPU" in caplog.text
    assert seen["profile"]["trt_profile_min_shapes"].startswith("sample:1x3x32x32,")
    assert "sample:16x3x32x32" in seen["profile"]["trt_profile_max_shapes"]


def test_gpu_benchmark_exits_clearly_without_cuda():
    """tools/bench_gpu.py needs CUDA; on a machine without it (this one) it says so and exits 2."""
    import subprocess
    import sys

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: the benchmark would run")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, os.path.join(root, "tools", "bench_gpu.py")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    assert "no CUDA GPU here" in p.stderr and "make install GPU=1" in p.stderr
