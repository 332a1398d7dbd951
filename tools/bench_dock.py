"""The dock's generation time beside the bench's, measured in one run on one machine (issue 21).

    .venv/bin/python tools/bench_dock.py [--gsd 2] [--size 500] [--rounds 2] [--model rsgen-base]

The same request (--size m square over Swellendam at --gsd m, rsgen-base's defaults) is generated alternately
through the dock's GenerationTask (a QgsTask on QGIS's task manager, in a headless QgsApplication) and through
core.engine.generate.generate on the calling thread, as `make bench` and the command line do. Alternating keeps a busy
machine's load from favouring one side; both use the engine settings the tests hold equal
(tests/test_first_hour.py::test_the_docks_engine_settings_are_the_command_lines). Prints each time and the ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gsd", type=float, default=2.0)
    ap.add_argument("--size", type=float, default=500.0, help="side of the square area in metres")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="rsgen-base")
    a = ap.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    from rsgen_qgis.core.engine.generate import generate
    from rsgen_qgis.core.runtime.providers import choose
    from rsgen_qgis.core.request import GenerationRequest
    from rsgen_qgis.gis.task import GenerationTask

    class NoLayerTask(GenerationTask):
        def finished(self, ok: bool) -> None:  # the layer is not the point here (and there is no project)
            self.done = True

    x0, y0 = 453000.0, 6233600.0
    folder = tempfile.mkdtemp(prefix="rsgen-bench-dock-")
    providers = choose("auto")

    def request(i: int, side: str) -> GenerationRequest:
        return GenerationRequest(extent=(x0, y0, x0 + a.size, y0 + a.size), crs="EPSG:32734", gsd=a.gsd,
                                 prompt="a satellite image of medium density residential area with trees",
                                 seed=i, model=a.model, output=os.path.join(folder, f"{side}{i}.tif"))

    generate(request(99, "warm"), providers=providers)  # sessions loaded and hashes checked once, for both
    times = {"dock task": [], "bench (generate)": []}
    for i in range(a.rounds):
        t0 = time.perf_counter()
        task = NoLayerTask(request(i, "dock"), (), providers)
        QgsApplication.taskManager().addTask(task)
        while not task.done:
            app.processEvents()
            time.sleep(0.01)
        assert task.error is None, task.error
        times["dock task"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate(request(i, "bench"), providers=providers)
        times["bench (generate)"].append(time.perf_counter() - t0)
    px = round(a.size / a.gsd)
    print(f"{px} x {px} px at {a.gsd} m, {a.rounds} rounds, {os.cpu_count()} cores, providers {providers}")
    for name, ts in times.items():
        print(f"  {name:18s} " + ", ".join(f"{t:.1f} s" for t in ts) + f"  (best {min(ts):.1f} s)")
    print(f"  dock / bench (best): {min(times['dock task']) / min(times['bench (generate)']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
