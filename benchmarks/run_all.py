"""Regenerate every benchmark number, plot and ``benchmarks/RESULTS.md`` with one command.

    python3 -m benchmarks.run_all            # the real benchmark (hours on a 2-core CPU; reuses the zoo)
    python3 -m benchmarks.run_all --quick    # a smoke version on scikit-learn digits (about a minute),
                                            # written to a temporary folder, never over the real results
    python3 -m benchmarks.run_all --skip-speed --skip-low   # pieces can be left out

Long steps reuse what exists (zoo models, per-model detection results, purification results); pass
``--force`` to recompute the detection and purification cells, ``--retrain`` to retrain the zoo.
CIFAR-10 on the CPU: ``--cifar ~/.cache/flare-data/cifar10`` (narrow-resnet, slow). The GPU rows come
from ``benchmarks/gpu_cifar.py`` (see its docstring).
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.common import RESULTS, write_csv

logger = logging.getLogger(__name__)

QUICK_EPOCHS = 4


def run_quick(work: Path, *, detectors: Sequence[str] = ("flare", "art-ss"),
              speed_stages: Sequence[str] = ("forward", "features")) -> Path:
    """The whole harness end to end on digits (1 epoch, a 2-model x 2-detector matrix, one purification,
    a 2-stage speed row) inside ``work``; returns the generated RESULTS.md."""
    from benchmarks import detect_matrix, purification, report
    from benchmarks import speed as speed_mod
    from benchmarks.zoo import ZooSpec, build

    work = Path(work)
    zoo, cache, results = work / "zoo", work / "cache", work / "results"
    specs = [ZooSpec(name="digits-clean", data="builtin:digits", epochs=QUICK_EPOCHS),
             ZooSpec(name="digits-badnets-10", data="builtin:digits", attack="badnets", rate=0.1,
                     epochs=QUICK_EPOCHS)]
    entries = [build(s, zoo=zoo, cache=cache) for s in specs]
    for e in entries:
        detect_matrix.run_model(e, detectors, cache=cache, out_dir=results / "detect",
                                command="python3 -m benchmarks.run_all --quick")
    detect_matrix.write_aggregate(detect_matrix.collect(results / "detect"), results)
    row = purification.run_one(entries[1], entries[0].metrics.get("benign_accuracy"), zoo=zoo, cache=cache,
                               out_dir=results / "purification")
    row = purification.seed_spread(entries[1], row, (0, 1), zoo=zoo, cache=cache, out_dir=results / "purification")
    write_csv(results / "purification.csv", [row], purification.COLUMNS)
    if speed_stages:
        from benchmarks.common import write_json

        rows = speed_mod.run([500], str(entries[1].model), str(entries[1].train), label="digits",
                             stages=speed_stages, scratch_root=cache)
        sec = {r["stage"]: r["seconds"] for r in rows}
        ratio = {"500": round(sec["features"] / max(sec["forward"], 1e-9), 2)} if len(sec) == 2 else {}
        write_json(results / "speed" / "speed.json", {"rows": rows, "feature_pass_over_forward": ratio,
                                                      "command": "python3 -m benchmarks.run_all --quick"})
        speed_mod.plot(rows, work / "plots" / "speed_loglog.png")
    return report.build(results=results, out=work / "RESULTS.md", plots=work / "plots", zoo=zoo)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.run_all", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="--quick: folder to write into (default: a new temp folder)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--skip-low", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-purification", action="store_true")
    p.add_argument("--cifar", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    if args.quick:
        work = Path(args.out or tempfile.mkdtemp(prefix="flare-bench-quick-"))
        print(run_quick(work))
        return 0
    from benchmarks import (atypicality_floor, confirm_study, detect_matrix, foundation, latent_calibration,
                            loss_ranking, one_feature_check, purification, ranking_check, report, separability,
                            shortcut_probe, speed, tail_calibration)

    foundation.main(["--retrain"] if args.retrain else [])
    force = ["--force"] if args.force else []
    detect_matrix.main(force + ([] if args.skip_low else ["--low-rates"]))
    fmnist = list(detect_matrix.MATRIX_10) + ([] if args.skip_low else list(detect_matrix.MATRIX_LOW))
    cifar = list(detect_matrix.MATRIX_CIFAR) if args.cifar else []
    if cifar:
        detect_matrix.main(force + ["--cifar", args.cifar] + cifar)
    cifar_opt = ["--cifar", args.cifar] if args.cifar else []
    latent_calibration.main(cifar_opt)  # the models its thresholds were calibrated on
    confirm_study.main(cifar_opt + fmnist + cifar)
    tail_calibration.main(cifar_opt)
    atypicality_floor.main(cifar_opt)  # these three read the caches the matrix wrote
    one_feature_check.main(cifar_opt)
    one_feature_check.main(cifar_opt + ["--sd-floor", "0"])
    ranking_check.main(cifar_opt)
    shortcut_probe.main(["--all"] + cifar_opt)
    loss_ranking.main([])
    separability.main(["fmnist-blended-10", "fmnist-wanet-10"])
    if not args.skip_purification:
        purification.main(["--force"] if args.force else [])
    if not args.skip_speed:
        speed.main([] if not args.cifar else ["--cifar", args.cifar])
    print(report.build())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
