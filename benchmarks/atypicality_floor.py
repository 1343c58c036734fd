"""A study, not a stage: class atypicality with the robust scale floored at a share of each column's SD.

:func:`flare_core.detectors.scoring.class_atypicality` standardises each class's penultimate features by
median / MAD.  A channel nearly silent in a class (CIFAR-10 narrow ResNet: MAD / SD under 0.1 in 9-28
class columns per model) gets a MAD of ~0.001, so the few samples it fires for dominate the class's
atypicality (session 17; ``benchmarks.one_feature_check``).  Where FLARE default flags nothing, its scores
rank the samples by that atypicality, so this measures how the poison's AUROC changes when each column's
scale is at least ``floor`` x its SD, and the smallest MAD / SD of any class column (a floor under it
changes nothing on that model).  ``auroc`` is the statistic without a floor (before session 17); FLARE
default now uses ``scoring.ATYPICALITY_SD_FLOOR`` (0.2).

    python3 -m benchmarks.atypicality_floor MODELS ... [--cifar ROOT]   # -> results/atypicality_floor.json
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import RESULTS, read_json, write_json
from benchmarks.detect_matrix import CACHE, cached_arrays
from benchmarks.zoo import FMNIST_SPECS, cifar_specs

FLOORS = (0.1, 0.2, 0.25, 0.5)


def mad_to_sd_ratios(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1.4826 MAD / SD of every column of every class (columns with SD 0 skipped): a floor ``f`` on the
    robust scale acts on exactly the columns whose ratio is under ``f``."""
    P = np.asarray(P, dtype=np.float64)
    ratios = []
    for c in np.unique(y):
        X = P[y == c]
        sd = X.std(axis=0)
        mad = 1.4826 * np.median(np.abs(X - np.median(X, axis=0)), axis=0)
        ratios.append((mad / np.where(sd > 0, sd, np.inf))[sd > 0])
    return np.concatenate(ratios)


def min_mad_to_sd(P: np.ndarray, y: np.ndarray) -> float:
    """The smallest 1.4826 MAD / SD over the columns of every class (columns with SD 0 skipped)."""
    return float(mad_to_sd_ratios(P, y).min())


def model_row(name: str, specs: dict, cache: Path = CACHE) -> dict:
    from sklearn.metrics import roc_auc_score

    from flare_core.detectors.scoring import class_atypicality

    y, truth, P, _ = cached_arrays(name, specs, cache)
    row = {"model": name, "min_mad_to_sd": round(min_mad_to_sd(P, y), 3)}
    if truth.any():
        row["auroc"] = round(float(roc_auc_score(truth, class_atypicality(P, y, sd_floor=0.0))), 3)
        for f in FLOORS:
            row[f"auroc_floor_{f}"] = round(float(roc_auc_score(truth, class_atypicality(P, y, sd_floor=f))), 3)
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.atypicality_floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="zoo entries (default: every model with cached features)")
    p.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder root (adds the cached cifar-* entries)")
    p.add_argument("--merge", action="store_true",
                   help="keep the other models already in the results (re-run only these)")
    args = p.parse_args(argv)
    specs = dict(FMNIST_SPECS)
    if args.cifar:
        specs.update(cifar_specs(args.cifar))
    names = args.models or [n for n in specs if (Path(CACHE) / n / "pooled.npy").is_file()]
    out = RESULTS / "atypicality_floor.json"
    rows = ([r for r in read_json(out, {}).get("rows", []) if r["model"] not in names]
            if args.merge else [])
    for n in names:
        rows.append(model_row(n, specs))
        print(rows[-1], flush=True)
    command = "python3 -m benchmarks.atypicality_floor" + (" --cifar ROOT" if args.cifar else "")
    write_json(out, {"command": command, "floors": list(FLOORS), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
