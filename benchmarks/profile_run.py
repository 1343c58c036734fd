"""Where the time of one full ``flare purify`` run goes: cProfile of ``run_analysis`` on a zoo model.

Writes ``benchmarks/results/profile/<model>.txt`` (the stage timings the run itself records, then the
top functions by cumulative and by own time) and ``<model>.json`` (the stage timings).

    python3 -m benchmarks.profile_run fmnist-badnets-10            # FLARE default + per-class views
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.common import RESULTS, machine, write_json
from benchmarks.zoo import FMNIST_SPECS, build


def profile(name: str, views: bool = True, top: int = 30) -> dict:
    from flare_core.pipeline import AnalysisConfig, run_analysis

    entry = build(FMNIST_SPECS[name])
    cfg = AnalysisConfig(model=str(entry.model), data=str(entry.train), detector="flare", views=views,
                         ground_truth=str(entry.ground_truth) if entry.ground_truth else None)
    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prof.enable()
        run = run_analysis(cfg, Path(tmp) / "run")
        prof.disable()
        wall = time.perf_counter() - t0
        timings = run.meta.get("timings", {})
    out = RESULTS / "profile"
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    text.write(f"{name}: run_analysis wall {wall:.1f} s (views={views})\n")
    text.write("stage timings recorded by the run (s): " + json.dumps(timings) + "\n\n")
    for key in ("cumulative", "tottime"):
        text.write(f"--- top {top} by {key} ---\n")
        pstats.Stats(prof, stream=text).sort_stats(key).print_stats(top)
    (out / f"{name}.txt").write_text(text.getvalue())
    res = {"model": name, "wall_seconds": round(wall, 1), "timings": timings, "views": views,
           "machine": machine(), "load_average": os.getloadavg(),
           "command": f"python3 -m benchmarks.profile_run {name}"}
    write_json(out / f"{name}.json", res)
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.profile_run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--no-views", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    for name in args.models:
        print(profile(name, views=not args.no_views))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
