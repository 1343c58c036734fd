"""Calibration of FLARE default's latent stage (flare_core.detectors.latent): every bisection it tries, on
every class of every cached zoo model, with the poison fraction of both sides, so the d' threshold can be
read off: splits of genuine-only rows against splits that separate poison from genuine samples.

    python3 -m benchmarks.latent_calibration [models...]     # -> benchmarks/results/latent_calibration.json

Needs the cached penultimate features (``pooled.npy``, written by benchmarks.detect_matrix) and writes
``logits.npy`` beside them when missing.  Splits are tried down to depth 3 whatever their d' (the
threshold is not applied here), so the record shows what the threshold has to separate.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import CACHE, RESULTS, machine, write_json
from benchmarks.detect_matrix import MATRIX_10, _load, _truth
from benchmarks.zoo import FMNIST_SPECS, build


def cached_logits(name: str) -> np.ndarray:
    from flare_core.models.training import predict_logits

    path = CACHE / name / "logits.npy"
    if not path.exists():
        model, ds = _load(build(FMNIST_SPECS[name]), "cpu")
        tmp = path.with_name(f".logits.{os.getpid()}.npy")
        np.save(tmp, np.asarray(predict_logits(model, ds.images), dtype=np.float32))
        os.replace(tmp, path)
    return np.load(path)


def kind_of(p_a: float, p_b: float) -> str:
    if max(p_a, p_b) < 0.02:
        return "genuine-only"
    if min(p_a, p_b) > 0.98:
        return "poison-only"
    if min(p_a, p_b) <= 0.1 and max(p_a, p_b) >= 0.9:
        return "poison-vs-genuine"
    return "mixed"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from flare_core.detectors.latent import _robust_standardize, bisect_class

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="zoo entries (default: the 10 %% matrix, the clean control, BadNets 0.5 %%)")
    args = p.parse_args(argv)
    names = args.models or list(MATRIX_10) + ["fmnist-badnets-0.5"]
    rows = []
    for name in names:
        entry = build(FMNIST_SPECS[name])
        y = np.load(entry.train)["y"]
        truth = _truth(entry, len(y))
        P = np.load(CACHE / name / "pooled.npy")
        cached_logits(name)
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            _, splits = bisect_class(_robust_standardize(P[idx].astype(np.float64)), min_separation=0.0,
                                     keep_rows=True)
            for s in splits:
                a, b = s.pop("sides")
                pa, pb = float(truth[idx[a]].mean()), float(truth[idx[b]].mean())
                rows.append({"model": name, "class": int(c), **s, "poison_fraction": [round(pa, 4), round(pb, 4)],
                             "kind": kind_of(pa, pb)})
        print(name, "done", flush=True)
    summary = {}
    groups = {kind: [r for r in rows if r["kind"] == kind]
              for kind in ("genuine-only", "poison-vs-genuine", "mixed", "poison-only")}
    # what the threshold meets in a real run: every first split of a class (deeper splits are only tried
    # below an accepted one), and among them the unbalanced ones, which only the d' test guards
    groups["genuine-only, first split of a class"] = [r for r in groups["genuine-only"] if r["depth"] == 0]
    groups["genuine-only, first split, smaller side < 35 %"] = [
        r for r in groups["genuine-only"] if r["depth"] == 0 and min(r["sizes"]) < 0.35 * sum(r["sizes"])]
    for kind, members in groups.items():
        d = [r["dprime"] for r in members]
        if d:
            summary[kind] = {"count": len(d), "min": min(d), "max": max(d), "median": float(np.median(d))}
    write_json(RESULTS / "latent_calibration.json", {"command": "python3 -m benchmarks.latent_calibration",
                                                      "machine": machine(), "summary": summary, "splits": rows})
    for k, v in summary.items():
        print(f"{k:48s} n={v['count']:3d} d' min {v['min']:.2f} median {v['median']:.2f} max {v['max']:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    raise SystemExit(main())
