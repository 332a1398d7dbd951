"""Export a trained denoiser (and the text encoder) into a model package: ONNX graphs + manifest.json.

    python -m rsgen_qgis.training.export --checkpoint runs/train/last.pt --out models/rsgen-base
    python -m rsgen_qgis.training.export --checkpoint runs/latent/last.pt --out models/NAME \
        --autoencoder models/taef2 --text-from models/rsgen-base    (names both instead of copying them)

The manifest is the whole contract with the plugin (../shared/DESIGN.md): files with sha256, each graph's
inputs/outputs, the noise schedule and prediction type, tile size, image range, condition encodings. Tests
build a tiny random-weights package with `build_tiny_package`, through the same code.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from typing import Optional

import torch

from ..core.conditions.encoding import GUIDANCE_RANGE, CondLayout, manifest_conditions, spatial_channels
from ..core.runtime.models import sha256_file
from ..core.request import DEFAULT_SAMPLER
from .model import Denoiser, DenoiserConfig

FORMAT = "rsgen-model-package/1"


def denoiser_io(cfg: DenoiserConfig) -> dict:
    return {
        "inputs": {
            "sample": {"dtype": "float32", "shape": ["batch", cfg.image_channels, "height", "width"]},
            "timestep": {"dtype": "float32", "shape": ["batch"]},
            "spatial": {"dtype": "float32", "shape": ["batch", cfg.spatial_channels, "height", "width"]},
            "cond": {"dtype": "float32", "shape": ["batch", cfg.cond_dim]},
        },
        "outputs": {"prediction": {"dtype": "float32", "shape": ["batch", cfg.image_channels, "height", "width"]}},
    }


def export_denoiser(model: Denoiser, path: str, opset: int = 17) -> None:
    """fp32 ONNX with dynamic batch and image size (any multiple of the UNet's downsampling factor). Exported
    without constant folding, so every parameter is an initializer under its own name (ONNX Runtime folds the
    reshapes and transposes when it loads the graph): training can start again from a committed package's graph
    (state_from_onnx)."""
    cfg = model.cfg
    model = model.eval().float()
    t = cfg.tile
    args = (torch.randn(2, cfg.image_channels, t, t), torch.tensor([500.0, 10.0]),
            torch.randn(2, cfg.spatial_channels, t, t), torch.randn(2, cfg.cond_dim))
    axes = {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
            "spatial": {0: "batch", 2: "height", 3: "width"}, "cond": {0: "batch"},
            "prediction": {0: "batch", 2: "height", 3: "width"}}
    with torch.no_grad():
        torch.onnx.export(model, args, path, input_names=["sample", "timestep", "spatial", "cond"],
                          output_names=["prediction"], dynamic_axes=axes, opset_version=opset, dynamo=False,
                          do_constant_folding=False)
    name_every_parameter(path, model)


def name_every_parameter(path: str, model: torch.nn.Module) -> None:
    """The exporter keeps one initializer for byte-identical parameters (freshly initialised norms): add the
    others under their own names (unused by the graph, a few bytes) so state_from_onnx finds every one."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(path)
    have = {i.name for i in m.graph.initializer} | {o for n in m.graph.node for o in n.output}
    missing = {k: v for k, v in model.state_dict().items() if k not in have}
    if not missing:
        return
    for k, v in missing.items():
        m.graph.initializer.append(numpy_helper.from_array(v.detach().cpu().numpy(), k))
    onnx.save(m, path)


def state_from_onnx(path: str, model: torch.nn.Module) -> dict:
    """The denoiser's state dict read back from its fp32 graph (export_denoiser keeps the parameter names);
    raises ValueError naming what does not match, so a phase never starts from the wrong weights."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(path).graph
    inits = {i.name: i for i in g.initializer}
    for n in g.node:  # a parameter the exporter shared with an identical one: Identity(kept) -> its name
        if n.op_type == "Identity" and n.input[0] in inits:
            inits.setdefault(n.output[0], inits[n.input[0]])
    out = {}
    for k, v in model.state_dict().items():
        if k not in inits:
            raise ValueError(f"{path}: no initializer {k!r}; the graph was not exported by this version's "
                             "export_denoiser (names kept) or is another architecture.")
        a = numpy_helper.to_array(inits[k])
        if tuple(a.shape) != tuple(v.shape):
            raise ValueError(f"{path}: {k!r} is {a.shape} in the graph, {tuple(v.shape)} in the model.")
        out[k] = torch.from_numpy(a.copy())
    return out


def export_fp16(src: str, dst: str) -> None:
    """fp16 weights and compute for GPUs, fp32 inputs/outputs so the runtime feeds both alike."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.save(m, dst)


def autoencoder_entry(ae_dir: str) -> dict:
    """What a latent model's manifest says of its autoencoder package (core.runtime.autoencoder): its id, factor,
    channels and the decoder's sha256 (so a different decoder under the same id is refused at run time)."""
    with open(os.path.join(ae_dir, "manifest.json"), encoding="utf-8") as f:
        m = json.load(f)
    ae = m["autoencoder"]
    return {"package": m["id"], "factor": int(ae["factor"]), "channels": int(ae["channels"]),
            "decoder_sha256": m["files"][ae["decoder"]["file"]]["sha256"]}


def text_reference(text_dir: str) -> dict:
    """What a model's manifest says of a text encoder it takes from the package in text_dir instead of carrying a
    copy (core.runtime.references): the graph and tokenizer entries naming that package, pinned by the sha256 its
    manifest lists, and the encoder's width ('dim'). The two files are verified first, and the package must carry
    its text encoder itself (one level only)."""
    from ..core.runtime.manifest_schema import text_package
    from ..core.runtime.models import read_package

    pkg = read_package(text_dir)
    m, g = pkg.manifest, pkg.manifest["graphs"].get("text_encoder")
    if g is None or pkg.kind == "autoencoder" or pkg.interface != "rsgen":
        raise ValueError(f"{text_dir}: package {pkg.id!r} has no rsgen text encoder to take.")
    if text_package(m) is not None:
        raise ValueError(f"{text_dir}: package {pkg.id!r} takes its own text encoder from {text_package(m)!r}; name "
                         "the package that carries it (one level only).")
    tok = m.get("tokenizer", {})
    vocab = tok.get("vocab", "vocab.txt")
    for f in (g["file"], vocab):
        pkg.file(f)  # listed, inside, hashed: a reference to a damaged package is not written
    dim = g.get("outputs", {}).get("embedding", {}).get("shape", [None])[-1]
    if not isinstance(dim, int):
        dim = m["conditions"]["cond_layout"]["text"][1]
    return {"dim": int(dim),
            "graph": {"package": pkg.id, "file": g["file"], "sha256": m["files"][g["file"]]["sha256"],
                      "inputs": g.get("inputs", {}), "outputs": g.get("outputs", {})},
            "tokenizer": {"type": "wordpiece", "package": pkg.id, "vocab": vocab,
                          "vocab_sha256": m["files"][vocab]["sha256"], "lowercase": tok.get("lowercase", True),
                          "max_length": tok.get("max_length", 64)}}


def write_package(out_dir: str, model: Denoiser, schedule: dict, *, model_id: str, name: str,
                  text_kind: str = "minilm", info: Optional[dict] = None, fp16: bool = True,
                  autoencoder: Optional[dict] = None, text_from: Optional[str] = None) -> dict:
    """Write every file of a package into out_dir (replacing it atomically) and return the manifest.
    autoencoder: a latent model's autoencoder entry (autoencoder_entry); the denoiser then works on its latents
    (cfg.image_channels = its channels, cfg.tile in latent cells) and the manifest's tile is in pixels.
    text_from: a package folder whose text encoder the model takes (text_reference) instead of exporting its own
    (text_kind is then not used)."""
    from ..core.runtime.manifest_schema import check_manifest
    from .text_encoder import export_text_encoder

    ref = text_reference(text_from) if text_from else None
    if ref and ref["graph"]["package"] == model_id:
        raise ValueError(f"The model {model_id!r} cannot take its text encoder from a package with its own id.")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        text = ref or export_text_encoder(tmp, kind=text_kind, quantize=(text_kind == "minilm"))
        cfg = model.cfg
        lay = CondLayout(text["dim"], GUIDANCE_RANGE if cfg.guidance_input else None)
        f = int(autoencoder["factor"]) if autoencoder else 1
        if autoencoder and cfg.image_channels != int(autoencoder["channels"]):
            raise ValueError("The denoiser's channels do not match its autoencoder's latent channels.")
        if cfg.cond_dim != lay.dim or cfg.spatial_channels != spatial_channels(image_channels=cfg.image_channels):
            raise ValueError(f"The denoiser's condition sizes do not match the text encoder ({text['dim']} values) / "
                             "condition layout.")
        export_denoiser(model, os.path.join(tmp, "denoiser.onnx"))
        graphs = {"denoiser": {"file": "denoiser.onnx", **denoiser_io(cfg)},
                  "text_encoder": ref["graph"] if ref else
                  {"file": text["file"], "inputs": text["inputs"], "outputs": text["outputs"]}}
        if fp16:
            export_fp16(os.path.join(tmp, "denoiser.onnx"), os.path.join(tmp, "denoiser_fp16.onnx"))
            graphs["denoiser"]["fp16_file"] = "denoiser_fp16.onnx"
        info = dict(info or {})
        manifest = {
            "format": FORMAT,
            "id": model_id,
            "name": name,
            "version": info.pop("version", "0.1.0"),
            "kind": "latent" if autoencoder else "pixel",
            "license": info.pop("license", "see MODEL_CARD.md"),
            "graphs": graphs,
            "tokenizer": ref["tokenizer"] if ref else
            {"type": "wordpiece", "vocab": text["vocab"], "lowercase": text.get("lowercase", True),
             "max_length": text.get("max_length", 64)},
            "scheduler": schedule,
            "tile": {"size": cfg.tile * f, "multiple": 2 ** (len(cfg.block_out_channels) - 1) * f},
            "image": {"channels": ["red", "green", "blue"], "range": [-1.0, 1.0]},
            "conditions": manifest_conditions(text["dim"], info.pop("metadata_policy", None), cfg.guidance_input,
                                              image_channels=cfg.image_channels),
            "architecture": {"type": "diffusers.UNet2DModel+cond_mlp", **cfg.to_dict()},
            "defaults": info.pop("defaults", {"steps": 20, "guidance": 3.0, "sampler": DEFAULT_SAMPLER}),
            **({"autoencoder": dict(autoencoder)} if autoencoder else {}),
            **info,
        }
        files = sorted(f for f in os.listdir(tmp) if not f.startswith("."))
        manifest["files"] = {f: {"sha256": sha256_file(os.path.join(tmp, f)),
                                 "bytes": os.path.getsize(os.path.join(tmp, f))} for f in files}
        check_manifest(manifest, os.path.join(out_dir, "manifest.json"))
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        # the model card and the records beside it (evaluations, sample grids) stay; graphs and the manifest are
        # the new ones (a graph this export did not write would be stale: it goes)
        for name in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []:
            src = os.path.join(out_dir, name)
            if name in manifest["files"] or name == "manifest.json" or name.endswith(".onnx") \
                    or name.startswith(".") or not os.path.isfile(src) or os.path.islink(src):
                continue
            shutil.copy2(src, os.path.join(tmp, name))
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tiny_config(text_dim: int = 32, guidance_input: bool = False, image_channels: int = 3,
                tile: int = 32) -> DenoiserConfig:
    lay = CondLayout(text_dim, GUIDANCE_RANGE if guidance_input else None)
    return DenoiserConfig(image_channels=image_channels, spatial_channels=spatial_channels(image_channels=image_channels),
                          cond_dim=lay.dim, block_out_channels=(8, 16), attention_levels=(False, True),
                          norm_num_groups=4, attention_head_dim=8, tile=tile, guidance_input=guidance_input)


def build_tiny_package(out_dir: str, seed: int = 0, guidance_input: bool = False,
                       model_id: str = "rsgen-tiny", autoencoder_dir: Optional[str] = None,
                       text_from: Optional[str] = None) -> dict:
    """A random-weights package in the real format, for plumbing tests (fast to build and to run);
    guidance_input: shaped like a guidance-distilled model; autoencoder_dir: a latent model on that autoencoder
    package's latents (tile of 8 latent cells); text_from: a tiny package folder whose text encoder it names instead
    of carrying a copy (the same weights as its own would have: the tiny encoder is seeded)."""
    from .train import SCHEDULE

    torch.manual_seed(seed)
    ae = autoencoder_entry(autoencoder_dir) if autoencoder_dir else None
    cfg = tiny_config(guidance_input=guidance_input, image_channels=ae["channels"] if ae else 3,
                      tile=8 if ae else 32)
    model = Denoiser(cfg)
    return write_package(out_dir, model, dict(SCHEDULE), model_id=model_id, name=f"{model_id} (random weights)",
                         text_kind="tiny", fp16=False, autoencoder=ae, text_from=text_from,
                         info={"description": "Random weights for tests; produces noise-like images.",
                               "training": {"gsd_range_m": [1.0, 20.0]}})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    ap.add_argument("--info", help="JSON file with extra manifest fields (licence, training, metadata_policy)")
    ap.add_argument("--autoencoder", help="a latent model's autoencoder package folder (models/taef2)")
    ap.add_argument("--text-kind", default="minilm", choices=("minilm", "tiny"),
                    help="text encoder to ship (tiny: random, for toy runs and tests)")
    ap.add_argument("--text-from", metavar="PACKAGE_DIR",
                    help="take the text encoder of this installed package (e.g. models/rsgen-base) instead of "
                         "shipping a copy: the manifest names it and pins its files' sha256")
    ap.add_argument("--no-fp16", action="store_true")
    a = ap.parse_args(argv)
    st = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    model = Denoiser(DenoiserConfig.from_dict(st["config"]))
    model.load_state_dict(st["model" if a.raw else "ema"])
    info = {}
    if a.info:
        with open(a.info) as f:
            info = json.load(f)
    wall = st["elapsed_s"] + st.get("prior_wall_s", 0.0)  # with the instalments it started from
    info.setdefault("training", {}).update({"steps": st["step"], "wall_s": round(wall),
                                            "device": st.get("device", "cpu")})
    if st.get("prior_phases"):  # distill.py / progressive.py: the phases the teacher went through
        info["training"]["prior_phases"] = st["prior_phases"]
    if "distillation" in st:  # distill.py: its own steps and time, and the teacher it started from
        info["training"]["distillation"] = st["distillation"]
    if "progressive" in st:  # progressive.py: the student samples in half its teacher's DDIM steps
        info["training"]["progressive_distillation"] = st["progressive"]
        info["defaults"] = {**info.get("defaults", {"guidance": 3.0}), "steps": st["progressive"]["sampling_steps"],
                            "sampler": st["progressive"]["sampler"]}
    m = write_package(a.out, model, st["schedule"], model_id=info.pop("id", "rsgen-base"),
                      name=info.pop("name", "rsgen base"), info=info, text_kind=a.text_kind, fp16=not a.no_fp16,
                      autoencoder=autoencoder_entry(a.autoencoder) if a.autoencoder else None,
                      text_from=a.text_from)
    total = sum(v["bytes"] for v in m["files"].values())
    print(f"wrote {a.out}: {len(m['files'])} files, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
