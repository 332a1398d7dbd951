"""Give a model package a weak model for autoguidance (core.engine.autoguide).

    python -m rsgen_qgis.training.weak_model attach --package models/rsgen-base-1 \\
        --weak /tmp/a11_int8.onnx --scale 2 --source "rsgen-base-1 1.0.0a11, int8" [--drop-fp16]

The weak graph (an earlier, shorter-trained instalment of the same model, as one ONNX file: the int8 graph keeps
the package small) is checked against the denoiser's inputs and outputs by ONNX Runtime, copied in as
weak_denoiser.onnx, listed with its sha256 and recorded under graphs.weak_denoiser with the default scale under
defaults.autoguidance; the manifest is replaced atomically after the graph is in place and checked as the run time
checks it. --drop-fp16 removes the denoiser's fp16 graph (a GPU then runs the fp32 one) to keep the package within
its size. No torch: onnxruntime only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Optional

from ..core.errors import ModelPackageError
from ..core.runtime.manifest_schema import check_manifest
from ..core.runtime.models import ModelPackage, check_io, read_package
from ..core.runtime.package_files import sha256_file
from .manifest_write import replace_manifest

NAME = "weak_denoiser.onnx"


def attach(package: str, weak: str, scale: float, source: str = "", drop_fp16: bool = False) -> dict:
    """Attach `weak` to the package at `package` (see the module's doc); returns the new manifest."""
    import onnxruntime as ort

    pkg = read_package(package)
    graphs = pkg.manifest.get("graphs", {})
    if pkg.interface != "rsgen" or "denoiser" not in graphs:
        raise ModelPackageError(f"{package}: a weak model guides an rsgen denoiser; this package has none.")
    if not 1.0 < scale <= 10.0:
        raise ValueError(f"The default autoguidance scale must be above 1 (off) and at most 10 (got {scale}).")
    man = json.loads(json.dumps(pkg.manifest))
    den = man["graphs"]["denoiser"]
    spec = {"file": NAME, "inputs": den.get("inputs", {}), "outputs": den.get("outputs", {})}
    if source:
        spec["source"] = source
    try:
        sess = ort.InferenceSession(weak, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelPackageError(f"{weak}: ONNX Runtime cannot load this graph ({exc}).") from exc
    check_io(ModelPackage(pkg.path, {**man, "graphs": {**man["graphs"], "weak_denoiser": spec}}), "weak_denoiser",
             sess, weak)
    old = (pkg.manifest["graphs"].get("weak_denoiser") or {}).get("file")
    dropped: Optional[str] = den.pop("fp16_file", None) if drop_fp16 else None
    man["graphs"]["weak_denoiser"] = spec
    man.setdefault("defaults", {})["autoguidance"] = float(scale)
    for name in filter(None, (old, dropped)):
        man["files"].pop(name, None)
    dst = os.path.join(pkg.path, NAME)
    tmp = os.path.join(pkg.path, f".{NAME}.tmp")
    shutil.copyfile(weak, tmp)
    man["files"][NAME] = {"sha256": sha256_file(tmp), "bytes": os.path.getsize(tmp)}
    check_manifest(man, os.path.join(pkg.path, "manifest.json"))
    os.replace(tmp, dst)
    replace_manifest(pkg.path, man)
    for name in filter(None, (dropped, old if old != NAME else None)):
        try:
            os.remove(os.path.join(pkg.path, name))
        except FileNotFoundError:
            pass
    return man


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rsgen_qgis.training.weak_model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("attach", help="copy a weak graph into a package and make autoguidance its default")
    a.add_argument("--package", required=True, help="the model package folder")
    a.add_argument("--weak", required=True, help="the weak model's ONNX graph (the denoiser's inputs and outputs)")
    a.add_argument("--scale", type=float, default=2.0, help="the package's default autoguidance scale (> 1)")
    a.add_argument("--source", default="", help="what the weak model is, in words (recorded in the manifest)")
    a.add_argument("--drop-fp16", action="store_true", help="remove the denoiser's fp16 graph (package size)")
    args = ap.parse_args(argv)
    man = attach(args.package, args.weak, args.scale, args.source, args.drop_fp16)
    print(f"{args.package}: weak model {NAME} ({man['files'][NAME]['bytes'] / 1e6:.1f} MB), default autoguidance "
          f"{man['defaults']['autoguidance']:g}")


if __name__ == "__main__":
    main()
