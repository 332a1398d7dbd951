"""Give a model package a prompt bank (core.engine.prompt_bank): the phrases it was trained with, so that a
free-form prompt is read as a mixture of them.

    python -m rsgen_qgis.training.prompt_bank attach --package models/rsgen-base-1 [--temperature 0.03]

The phrases are the AID scene synonyms and the maps captions' parts (training/captions.py) but the fallback: the
words the latent model's captions are built from, without the templates ("a satellite image of ..."), which add
nothing a prompt is about. The manifest is replaced atomically and checked as the run time checks it. No torch.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import List

from ..core.runtime.manifest_schema import check_manifest
from ..core.runtime.models import read_package
from .captions import AID_SYNONYMS, GREEN, MAJOR, URBAN, WATER
from .manifest_write import replace_manifest


def phrases() -> List[str]:
    out: List[str] = []
    for group in list(AID_SYNONYMS.values()) + [URBAN, MAJOR, GREEN, WATER]:  # not FALLBACK: the captions of
        # maps tiles with little on them ("a town"), which would take every prompt about towns
        out += [p for p in group if p not in out]
    return out


def attach(package: str, temperature: float = 0.03) -> dict:
    pkg = read_package(package)
    man = json.loads(json.dumps(pkg.manifest))
    if pkg.interface != "rsgen" or "text_encoder" not in man.get("graphs", {}):
        raise ValueError(f"{package}: a prompt bank needs an rsgen denoiser with a text encoder.")
    man["conditions"]["prompt_bank"] = {"phrases": phrases(), "temperature": float(temperature),
                                        "source": "training/captions.py: AID scene synonyms and maps caption parts"}
    check_manifest(man, os.path.join(pkg.path, "manifest.json"))
    replace_manifest(pkg.path, man)
    return man


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rsgen_qgis.training.prompt_bank", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("attach", help="list the training phrases in a package's manifest")
    a.add_argument("--package", required=True)
    a.add_argument("--temperature", type=float, default=0.03, help="softmax temperature over cosine similarities")
    args = ap.parse_args(argv)
    man = attach(args.package, args.temperature)
    print(f"{args.package}: prompt bank of {len(man['conditions']['prompt_bank']['phrases'])} phrases, temperature "
          f"{args.temperature:g}")


if __name__ == "__main__":
    main()
