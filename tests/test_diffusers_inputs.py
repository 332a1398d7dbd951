"""export-diffusers refuses what it cannot convert, naming the file or part, and never unpickles anything."""
import json
import os
import pickle
import shutil

import pytest

from tiny_diffusers import build_tiny_sd

from rsgen_qgis.cli import main
from rsgen_qgis.training.diffusers_inspect import DiffusersFolderError, inspect


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return build_tiny_sd(str(tmp_path_factory.mktemp("good") / "sd"))


@pytest.fixture
def folder(good, tmp_path):
    """A private copy to damage."""
    dst = str(tmp_path / "sd")
    shutil.copytree(good, dst)
    return dst


def _edit(path, **changes):
    with open(path) as f:
        d = json.load(f)
    d.update(changes)
    with open(path, "w") as f:
        json.dump(d, f)


def test_good_folder_passes(good):
    info = inspect(good)
    assert info["pipeline"] == "StableDiffusionPipeline" and not info["controlnet"]
    assert info["weights"]["unet"] == {"variant": None}


@pytest.mark.parametrize("part", ["unet", "vae", "text_encoder", "tokenizer", "scheduler"])
def test_missing_part_is_named(folder, part):
    shutil.rmtree(os.path.join(folder, part))
    with pytest.raises(DiffusersFolderError, match=f"missing part.*{part}/"):
        inspect(folder)


def test_missing_config_and_model_index(folder):
    os.remove(os.path.join(folder, "vae", "config.json"))
    with pytest.raises(DiffusersFolderError, match=r"vae[/\\]config.json: missing"):
        inspect(folder)
    os.remove(os.path.join(folder, "model_index.json"))
    with pytest.raises(DiffusersFolderError, match="model_index.json: missing"):
        inspect(folder)
    with pytest.raises(DiffusersFolderError, match="no such folder"):
        inspect(folder + "-nope")


def test_missing_weights(folder):
    os.remove(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"))
    with pytest.raises(DiffusersFolderError, match=r"vae: no weights file"):
        inspect(folder)


def test_pickle_only_checkpoint_is_refused_and_never_unpickled(folder, tmp_path):
    marker = tmp_path / "UNPICKLED"

    class Trap:
        def __reduce__(self):  # unpickling this creates the marker file
            return (open, (str(marker), "w"))

    st = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    os.remove(st)
    with open(os.path.join(folder, "unet", "diffusion_pytorch_model.bin"), "wb") as f:
        pickle.dump({"weights": Trap()}, f)
    with pytest.raises(DiffusersFolderError, match=r"diffusion_pytorch_model.bin: the unet weights are stored only "
                                                   r"as a pickle.*safetensors"):
        inspect(folder)
    rc = main(["export-diffusers", folder, "--out", str(tmp_path / "pkg")])
    assert rc == 2 and not marker.exists() and not (tmp_path / "pkg").exists()
    ckpt = tmp_path / "model.ckpt"
    shutil.copy(os.path.join(folder, "unet", "diffusion_pytorch_model.bin"), ckpt)
    with pytest.raises(DiffusersFolderError, match="pickle checkpoint, not a diffusers pipeline folder"):
        inspect(str(ckpt))
    assert not marker.exists()


def test_sdxl_and_transformer_pipelines_are_refused(folder):
    mi = os.path.join(folder, "model_index.json")
    _edit(mi, _class_name="StableDiffusionXLPipeline", text_encoder_2=["transformers", "CLIPTextModelWithProjection"])
    with pytest.raises(DiffusersFolderError, match="Stable Diffusion XL"):
        inspect(folder)
    _edit(mi, _class_name="PixArtAlphaPipeline", transformer=["diffusers", "PixArtTransformer2DModel"])
    with pytest.raises(DiffusersFolderError, match="transformer"):
        inspect(folder)


def test_unsupported_unet_variants_are_refused(folder):
    cfg = os.path.join(folder, "unet", "config.json")
    _edit(cfg, addition_embed_type="text_time")
    with pytest.raises(DiffusersFolderError, match="added embeddings.*SDXL"):
        inspect(folder)
    _edit(cfg, addition_embed_type=None, in_channels=9)
    with pytest.raises(DiffusersFolderError, match="inpainting"):
        inspect(folder)
    _edit(cfg, in_channels=4, _class_name="UNet3DConditionModel")
    with pytest.raises(DiffusersFolderError, match="UNet class 'UNet3DConditionModel'"):
        inspect(folder)


def test_unsupported_scheduler_is_refused(folder):
    cfg = os.path.join(folder, "scheduler", "scheduler_config.json")
    _edit(cfg, _class_name="FlowMatchEulerDiscreteScheduler")
    with pytest.raises(DiffusersFolderError, match="scheduler 'FlowMatchEulerDiscreteScheduler' is not supported"):
        inspect(folder)
    _edit(cfg, _class_name="DDIMScheduler", thresholding=True)
    with pytest.raises(DiffusersFolderError, match="scheduler_config.json: .*thresholding"):
        inspect(folder)
    _edit(cfg, thresholding=False, beta_schedule="exotic")
    with pytest.raises(DiffusersFolderError, match="beta_schedule 'exotic'"):
        inspect(folder)


def test_cli_reports_bad_folder(folder, tmp_path, capsys):
    shutil.rmtree(os.path.join(folder, "text_encoder"))
    assert main(["export-diffusers", folder, "--out", str(tmp_path / "pkg")]) == 2
    assert "text_encoder/" in capsys.readouterr().err


def test_cli_exports_a_good_folder(good, tmp_path, capsys):
    out = tmp_path / "models" / "my-sd"
    assert main(["export-diffusers", good, "--out", str(out), "--id", "my-sd"]) == 0
    assert "wrote" in capsys.readouterr().out
    from rsgen_qgis.core.runtime.models import load

    m = load(str(out), providers=["CPUExecutionProvider"])  # hashes and graph IO checked
    assert m.package.id == "my-sd" and m.package.kind == "latent"
