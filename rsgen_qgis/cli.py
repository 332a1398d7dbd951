"""Command line without QGIS running: the same request and engine as the dock and Processing.

    python -m rsgen_qgis generate --extent XMIN,YMIN,XMAX,YMAX --crs EPSG:32734 --gsd 10 \
        --prompt "dense housing by a river" --seed 7 --out out.tif
    python -m rsgen_qgis regenerate SOURCE.tif --out again.tif [--seed 8] [--prompt "..."]
    python -m rsgen_qgis models
    python -m rsgen_qgis batch JOB.yaml [--workers N | --scheduler tcp://host:port]
    python -m rsgen_qgis demo --out out/demo.tif
    python -m rsgen_qgis export-diffusers PATH --out models/NAME [--fp16]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .core.errors import ParameterError, RsgenError
from .core.request import DEFAULT_MODEL, DEFAULT_SAMPLER, PRECISIONS, SAMPLERS, GenerationRequest

# A sample extent for `demo`: Swellendam, Western Cape (UTM 34S), 1.6 km at 4 m/px.
DEMO = dict(extent=(453000.0, 6233600.0, 454600.0, 6235200.0), crs="EPSG:32734", gsd=4.0,
            prompt="a satellite image of medium density residential area with trees", seed=7)


def _extent(text: str):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("extent must be XMIN,YMIN,XMAX,YMAX (numbers)")
    if len(vals) != 4:
        raise argparse.ArgumentTypeError("extent must be XMIN,YMIN,XMAX,YMAX (four numbers)")
    return tuple(vals)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id or package folder (default {DEFAULT_MODEL}, "
                   "the 1.0 preview; rsgen-base is the 64 px pixel model 0.5.0)")
    p.add_argument("--model-dir", action="append", default=[], help="extra folder with model packages")
    p.add_argument("--provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"])
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own, as the "
                   "dock uses; rsgen-base-1 10, rsgen-base 20)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's own; "
                   "rsgen-base-1 5, rsgen-base 3)")
    p.add_argument("--sampler", default=None, choices=SAMPLERS, help=f"default: the model's own ({DEFAULT_SAMPLER} "
                   "for both bundled models)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: the model's int8 graph on the CPU (fp16 on a GPU) where it has one; fp32: exact")
    p.add_argument("--class-guidance", type=float, default=None, metavar="S",
                   help="how strongly the model's scene classifier steers the image towards the classes the "
                        "prompt names (0 = off; default: the model's)")
    p.add_argument("--autoguidance", type=float, default=None, metavar="W",
                   help="how far each step moves away from what the model's weaker version predicts (1 = off; "
                        "default: the model's; only models that carry a weak model)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rsgen_qgis", description="Generate georeferenced synthetic "
                                 "satellite images (rsgen_qgis engine, no QGIS needed).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate one GeoTIFF for an extent")
    g.add_argument("--extent", type=_extent, required=True, help="XMIN,YMIN,XMAX,YMAX in --crs units")
    g.add_argument("--crs", required=True, help="EPSG:xxxx, WKT or PROJ string")
    g.add_argument("--gsd", type=float, help="pixel size in CRS units (metres for UTM)")
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--prompt", default="")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--date", help="yyyy-mm-dd of the imagery to imitate (default unknown)")
    g.add_argument("--pixel-budget", type=int, default=None)
    g.add_argument("--large-area", action="store_true",
                   help="no pixel budget: world-anchored blocks written to disk as they finish")
    g.add_argument("--cascade", type=int, default=0, metavar="FACTOR",
                   help="coarse-to-fine: first generate at FACTOR x the GSD, then guide the fine pass with it "
                        "(e.g. 4)")
    g.add_argument("--guide-consistency", type=float, default=1.0, metavar="W",
                   help="with --cascade: how strictly the fine pass keeps the coarse image (1 = its 4x4 means equal "
                        "the coarse image's, 0 = the coarse image only steers the model; default 1)")
    g.add_argument("--out", required=True)
    _common(g)
    r = sub.add_parser("regenerate", help="make an image again from the request a generated GeoTIFF records, or a "
                       "variant of it (another seed, prompt, steps...)")
    r.add_argument("source", help="a GeoTIFF generated by rsgen_qgis")
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, help="default: the recorded seed (the same image)")
    r.add_argument("--prompt", help="default: the recorded prompt")
    r.add_argument("--steps", type=int)
    r.add_argument("--guidance", type=float)
    r.add_argument("--sampler", choices=SAMPLERS)
    r.add_argument("--precision", choices=PRECISIONS)
    r.add_argument("--class-guidance", type=float, metavar="S", help="default: the recorded class guidance")
    r.add_argument("--autoguidance", type=float, metavar="W", help="default: the recorded autoguidance")
    r.add_argument("--model", help="default: the recorded model id")
    r.add_argument("--model-dir", action="append", default=[], help="extra folder with model packages")
    r.add_argument("--provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"])
    r.add_argument("--quiet", action="store_true", help="no progress bar")

    d = sub.add_parser("demo", help="generate a sample image with the bundled default model")
    d.add_argument("--out", default="out/demo.tif")
    _common(d)
    sub.add_parser("models", help="list the installed model packages").add_argument(
        "--model-dir", action="append", default=[])
    i = sub.add_parser("install-model", help="install a model package zip (e.g. rsgen-base.zip) into a folder, "
                       "verified against its manifest; then pass that folder as --model-dir or in RSGEN_MODEL_DIRS")
    i.add_argument("zip", help="the model package zip")
    i.add_argument("--dest", required=True, help="models folder to install into (the package goes in DEST/<id>)")
    e = sub.add_parser("export-diffusers", help="convert a local diffusers Stable Diffusion pipeline folder into a "
                       "model package (needs torch, diffusers, transformers: the dev requirements)")
    e.add_argument("path", help="diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, ...)")
    e.add_argument("--out", required=True, help="package folder to write, e.g. models/diffusionsat")
    e.add_argument("--id", help="model id (default: the --out folder's name)")
    e.add_argument("--name", help="display name")
    e.add_argument("--fp16", action="store_true", help="also write fp16 UNet/ControlNet graphs for GPUs")
    e.add_argument("--control", choices=["layout", "guide"], default="layout",
                   help="what feeds a ControlNet: the layout drawn as a map, or the guide image")
    e.add_argument("--license", default="see the source model's licence", help="licence text for the manifest")
    e.add_argument("--cloud", type=float, default=0.0,
                   help="DiffusionSat models: cloud cover (percent) sent with every request (default 0)")
    e.add_argument("--date", help="DiffusionSat models: yyyy-mm-dd sent when a request has no date (the dock "
                   "and Processing have no date field); without it such requests are refused")
    from .batch.cli import add_parser as add_batch

    add_batch(sub)
    return ap


def _export_diffusers(a) -> int:
    """Imports torch lazily: the plugin's run-time path never loads it. The folder is checked first (JSON and
    file names only), so a bad folder is refused even where torch is not installed."""
    from .training.diffusers_inspect import inspect

    inspect(a.path)
    try:
        from .training.diffusers_export import convert
    except ImportError as exc:
        print(f"error: export-diffusers needs torch, diffusers and transformers ({exc}); install the dev "
              "requirements: pip install -r requirements-dev.txt", file=sys.stderr)
        return 2

    m = convert(a.path, a.out, model_id=a.id, name=a.name, fp16=a.fp16, control_source=a.control,
                license=a.license, metadata_defaults={"cloud": a.cloud, **({"date": a.date} if a.date else {})})
    total = sum(v["bytes"] for v in m["files"].values())
    print(f"wrote {a.out}: model {m['id']!r}, graphs {', '.join(m['graphs'])}, {len(m['files'])} files, "
          f"{total / 1e6:.1f} MB")
    return 0


def _regenerate(a) -> GenerationRequest:
    """The recorded request of `a.source`, with the options given on the command line changed."""
    from .core.recall import regenerate_request

    if os.path.abspath(a.source) == os.path.abspath(a.out):
        raise ParameterError("--out is the source file: write the new image elsewhere (the source is kept).")
    changes = {k: getattr(a, k) for k in ("seed", "prompt", "steps", "guidance", "sampler", "precision", "model",
                                      "class_guidance", "autoguidance")
               if getattr(a, k) is not None}
    req, notes, warning = regenerate_request(a.source, a.out, a.model_dir, **changes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return req


def _run(req: GenerationRequest, a) -> int:
    from .core.runtime import providers
    from .core.engine.generate import generate

    bar = None
    if not a.quiet:
        from tqdm import tqdm

        bar = tqdm(total=100, unit="%", desc="Generating", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]")

    def progress(f: float, msg: str) -> None:
        if bar is not None:
            bar.set_postfix_str(msg)
            bar.update(round(f * 100, 1) - bar.n)

    try:
        res = generate(req, progress, model_dirs=a.model_dir, providers=providers.choose(a.provider))
    finally:
        if bar is not None:
            bar.close()
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    g = res.grid
    print(f"wrote {res.path}")
    print(f"  {g.width} x {g.height} px, pixel size {g.pixel_size[0]:g} x {g.pixel_size[1]:g} CRS units, "
          f"bounds {', '.join(f'{v:.6g}' for v in g.bounds)}")
    print(f"  model {res.model_id} on {res.provider} ({res.denoiser_graph} graph), {res.seconds:.1f} s")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from .sigterm import terminates_cleanly

    a = build_parser().parse_args(argv)
    with terminates_cleanly():  # SIGTERM: temporary files removed, then the process dies of the signal
        return _main(a)


def _main(a) -> int:
    if a.cmd == "batch":
        from .batch.cli import run as run_batch

        return run_batch(a)
    try:
        if a.cmd == "models":
            from .core.runtime.manifest_schema import text_package
            from .core.runtime.models import discover, search_dirs
            from .core.runtime.references import missing_references

            errors: list = []
            pkgs = discover(a.model_dir, errors)
            for p in pkgs:
                ref = text_package(p.manifest)
                print(f"{p.id:20s} {p.name}  ({p.path})" + (f"  [text encoder from {ref}]" if ref else ""))
                for problem in missing_references(p, a.model_dir):
                    print(f"cannot run yet: {problem}", file=sys.stderr)
            if not pkgs:
                print(f"no model packages in: {', '.join(search_dirs(a.model_dir)) or 'no folder'}")
            for e in errors:
                print(f"skipped: {e}", file=sys.stderr)
            return 0
        if a.cmd == "install-model":
            from .core.runtime.install import install_zip

            from .core.runtime.references import missing_references

            pkg = install_zip(a.zip, a.dest)
            print(f"installed {pkg.id} ({pkg.name}) in {pkg.path}; use it with --model-dir {a.dest}")
            for problem in missing_references(pkg, [a.dest]):
                print(f"it cannot run yet: {problem}", file=sys.stderr)
            return 0
        if a.cmd == "export-diffusers":
            return _export_diffusers(a)
        if a.cmd == "regenerate":
            return _run(_regenerate(a), a)
        if a.cmd in ("demo", "generate"):  # options left out: the model package's own defaults, as in the dock
            from .core.runtime.sampling_defaults import resolve

            for k, v in resolve(a.model, a.model_dir, a.steps, a.guidance, a.sampler).items():
                setattr(a, k, v)
        if a.cmd == "demo":
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            req = GenerationRequest(output=a.out, model=a.model, steps=a.steps, guidance=a.guidance,
                                    sampler=a.sampler, precision=a.precision, class_guidance=a.class_guidance,
                                    autoguidance=a.autoguidance, **DEMO)
            print(f"demo: {DEMO['prompt']!r} over Swellendam, South Africa ({DEMO['crs']}, {DEMO['gsd']} m/px)")
            return _run(req, a)
        kw = {}
        if a.pixel_budget:
            kw["pixel_budget"] = a.pixel_budget
        req = GenerationRequest(extent=a.extent, crs=a.crs, gsd=a.gsd, width=a.width, height=a.height,
                                prompt=a.prompt, seed=a.seed, steps=a.steps, guidance=a.guidance,
                                sampler=a.sampler, model=a.model, date=a.date, output=a.out,
                                large_area=a.large_area, cascade=a.cascade, precision=a.precision,
                                guide_consistency=a.guide_consistency, class_guidance=a.class_guidance,
                                autoguidance=a.autoguidance, **kw)
        return _run(req, a)
    except RsgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled; nothing was written", file=sys.stderr)
        return 130
