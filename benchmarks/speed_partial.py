"""Assemble ``results/speed/speed.json`` from an interrupted ``benchmarks.speed`` log plus the stage
timings the detection matrix recorded at N = 60,000 (used when the full speed run could not finish).

    python3 -m benchmarks.speed_partial LOG [--numba NUMBA_JSON]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.common import PLOTS, RESULTS, machine, read_json, write_csv, write_json
from benchmarks.speed import plot


def rows_from_log(log: Path) -> list:
    return [json.loads(line) for line in Path(log).read_text().splitlines() if line.startswith("{")]


def rows_from_matrix(model: str = "fmnist-badnets-10") -> list:
    d = read_json(RESULTS / "detect" / f"{model}.json", {}) or {}
    out = []
    fs = d.get("feature_seconds") or {}
    if "abnormality" in fs:
        out.append({"stage": "features", "n": 60000, "seconds": fs["abnormality"], "dataset": "fashion-mnist",
                    "note": "from the detection matrix run (in-process, no memory figure)"})
    for r in d.get("rows", []):
        if r["detector"] == "flare":
            out.append({"stage": "detector", "n": 60000, "seconds": r["seconds"], "dataset": "fashion-mnist",
                        "note": "FLARE default fit, from the detection matrix run"})
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("log")
    p.add_argument("--numba", default=None)
    args = p.parse_args(argv)
    rows = rows_from_log(Path(args.log)) + rows_from_matrix()
    ratio = {}
    for n in sorted({r["n"] for r in rows}):
        f = [r["seconds"] for r in rows if r["stage"] == "features" and r["n"] == n and r.get("seconds")]
        b = [r["seconds"] for r in rows if r["stage"] == "forward" and r["n"] == n and r.get("seconds")]
        if f and b:
            ratio[str(n)] = round(f[0] / b[0], 2)
    numba = None
    if args.numba and Path(args.numba).is_file():
        lines = [x for x in Path(args.numba).read_text().splitlines() if x.startswith("{")]
        numba = json.loads(lines[-1]) if lines else None
    write_json(RESULTS / "speed" / "speed.json", {
        "rows": rows, "partial": True, "machine": machine(), "load_average": os.getloadavg(),
        "feature_pass_over_forward": ratio, "numba": numba, "profile": None,
        "command": "python3 -m benchmarks.speed (interrupted; assembled by python3 -m benchmarks.speed_partial)"})
    write_csv(RESULTS / "speed" / "speed.csv", rows)
    plot(rows, PLOTS / "speed_loglog.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
