"""Add a coarse base model to an exported package: the first stage of the two-stage (cascaded) generation.

    python -m rsgen_qgis.training.cascade_base --checkpoint runs/base16/last.pt --package models/rsgen-base

The base model is a denoiser trained at a quarter of the package's tile (16 px for rsgen-base's 64) on the same
data, so one base tile covers the ground of one fine tile at 4x the GSD. It gives the whole class-level layout
of a scene (where the fields, roofs, water and tarmac are) the capacity that the fine model must otherwise share
with texture; the fine model then adds the detail through its 4x guide condition, held to the base image by
core.engine.guideproj (Ho et al. 2022, "Cascaded diffusion models for high fidelity image generation").

It lives in the same folder and shares the text encoder, so it costs only its own graph. The package manifest
gains `cascade_base`: the factor and a complete manifest for the base (its graph, scheduler, tile, conditions,
the GSD range it was trained on), which core.runtime.models.load_base opens like any package.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

import torch

from ..core.conditions.encoding import manifest_conditions
from ..core.runtime.models import FORMAT, read_package, sha256_file
from ..core.request import DEFAULT_SAMPLER
from .export import denoiser_io, export_denoiser
from .model import Denoiser, DenoiserConfig

BASE_FILE = "base_denoiser.onnx"


def add_cascade_base(package_dir: str, checkpoint: str, gsd_range: tuple, guidance: float = 3.0,
                     training: dict = None) -> dict:
    """Export the checkpoint's EMA weights as BASE_FILE into package_dir and record it in the manifest."""
    pkg = read_package(package_dir)
    m = pkg.manifest
    st = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = DenoiserConfig.from_dict(st["config"])
    tile = int(m["tile"]["size"])
    if tile % cfg.tile:
        raise ValueError(f"The base tile {cfg.tile} px does not divide the package's tile {tile} px.")
    factor = tile // cfg.tile
    text_dim = m["conditions"]["cond_layout"]["text"][1]
    conditions = manifest_conditions(text_dim, {**m["conditions"].get("metadata_coverage", {}),
                                                "gsd": {"range": list(gsd_range), "outside": "warn"}})
    if cfg.cond_dim != conditions["cond_dim"] or cfg.guidance_input:
        raise ValueError("The base checkpoint's condition vector does not match the package's encoding.")
    model = Denoiser(cfg)
    model.load_state_dict(st["ema"])
    tmp = tempfile.mkdtemp(prefix=".base-", dir=package_dir)
    try:
        export_denoiser(model, os.path.join(tmp, BASE_FILE))
        shutil.move(os.path.join(tmp, BASE_FILE), os.path.join(package_dir, BASE_FILE))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = {"sha256": sha256_file(os.path.join(package_dir, BASE_FILE)),
             "bytes": os.path.getsize(os.path.join(package_dir, BASE_FILE))}
    text_file, vocab = m["graphs"]["text_encoder"]["file"], m["tokenizer"]["vocab"]
    # the fine model's text encoder: its own files, or the same reference to another package's (pinned there)
    text_files = {} if "package" in m["graphs"]["text_encoder"] else \
        {text_file: m["files"][text_file], vocab: m["files"][vocab]}
    base = {
        "format": FORMAT,
        "id": f"{m['id']}/base",
        "name": f"{m.get('name', m['id'])}: coarse base ({cfg.tile} px)",
        "version": m.get("version", ""),
        "kind": "pixel",
        "graphs": {"denoiser": {"file": BASE_FILE, **denoiser_io(cfg)},
                   "text_encoder": dict(m["graphs"]["text_encoder"])},
        "tokenizer": m["tokenizer"],
        "scheduler": st["schedule"],
        "tile": {"size": cfg.tile, "multiple": 2 ** (len(cfg.block_out_channels) - 1)},
        "image": m["image"],
        "conditions": conditions,
        "architecture": {"type": "diffusers.UNet2DModel+cond_mlp", **cfg.to_dict()},
        "defaults": {"steps": 20, "guidance": guidance, "sampler": DEFAULT_SAMPLER},
        "training": {"steps": st["step"], "wall_s": round(st["elapsed_s"]), "device": st.get("device", "cpu"),
                     **(training or {})},
        "files": {BASE_FILE: entry, **text_files},
    }
    m["cascade_base"] = {"factor": factor, "manifest": base}
    m["files"][BASE_FILE] = entry
    path = os.path.join(package_dir, "manifest.json")
    with open(path + ".partial", "w") as f:
        json.dump(m, f, indent=1)
    os.replace(path + ".partial", path)
    return m


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--package", required=True)
    ap.add_argument("--gsd-range", default="2.3,37.5",
                    help="metres per pixel the base was trained on, min,max (the fine model's training crops at 4x: "
                         "AID 12-37.5, maps 2.3-37.5)")
    ap.add_argument("--guidance", type=float, default=3.0, help="the base's default classifier-free guidance")
    a = ap.parse_args(argv)
    lo, hi = (float(v) for v in a.gsd_range.split(","))
    m = add_cascade_base(a.package, a.checkpoint, (lo, hi), a.guidance)
    print(f"{a.package}: cascade base {BASE_FILE} ({m['files'][BASE_FILE]['bytes'] / 1e6:.1f} MB), "
          f"factor {m['cascade_base']['factor']}")


if __name__ == "__main__":
    main()
