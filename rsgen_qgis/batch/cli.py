"""`python -m rsgen_qgis batch JOB.yaml [--workers N | --scheduler tcp://host:port]`."""
from __future__ import annotations

import argparse
import sys

from ..core.errors import RsgenError


def add_parser(sub) -> None:
    b = sub.add_parser("batch", help="generate the tiles of a job spec (YAML): COGs, VRT mosaic, manifest; resumable")
    b.add_argument("job", help="job spec (YAML)")
    b.add_argument("--workers", type=int, default=1,
                   help="worker processes of the local Dask cluster (default 1; 0 = run in this process)")
    b.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    b.add_argument("--provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"])
    b.add_argument("--quiet", action="store_true", help="no progress bar")


def run(a) -> int:
    from ..core.runtime import providers
    from . import runner, spec

    try:
        job = spec.load(a.job)
        man = runner.run(job, workers=a.workers, scheduler=a.scheduler, progress=not a.quiet,
                         providers=providers.choose(a.provider))
    except RsgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the manifest lists the finished tiles, run again to resume", file=sys.stderr)
        return 130
    print(f"{len(man['tiles'])}/{man['tiles_planned']} tiles done in {job.output} (mosaic.vrt, manifest.json)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rsgen_qgis")
    add_parser(ap.add_subparsers(dest="cmd", required=True))
    return run(ap.parse_args(argv))
