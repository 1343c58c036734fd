"""Calibration of FLARE default's latent stage (flare_core.detectors.latent): every split it tests, on every
class of every cached zoo model, with the poison fraction of both sides, so the d' threshold can be read off
(splits of genuine-only rows against splits that separate poison from genuine samples), and what the stage
alone flags, for each candidate setting (``max_clusters`` 2 = the plain 2-means split, 6 = also every
k-means cluster, k = 3..6, against the rest of its class when the 2-means split falls short).

    python3 -m benchmarks.latent_calibration [models...]     # -> benchmarks/results/latent_calibration.json

Needs the cached penultimate features (``pooled.npy``, written by benchmarks.detect_matrix) and writes
``logits.npy`` beside them when missing (both are computed when missing).  Each split also records the
median loss of its two sides, for a loss-backed rule.  The splits are the ones the detector tests: the first split of
every class, and below a split that reaches the threshold (6.5) the splits of its sides, down to depth 3.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import CACHE, RESULTS, machine, write_json
from benchmarks.detect_matrix import _load, _truth, cached_features
from benchmarks.detect_matrix import cached_logits as detect_matrix_logits
from benchmarks.zoo import FMNIST_SPECS, build, cifar_specs

SETTINGS = (2, 6)


def cached_logits(name: str, specs: Optional[dict] = None) -> np.ndarray:
    """The zoo model's training-set logits, through detect_matrix's cache (same file, same validity rule)."""
    entry = build((specs or FMNIST_SPECS)[name])
    model, ds = _load(entry, "cpu")
    return detect_matrix_logits(entry, model, ds, CACHE / name)


def kind_of(p_a: float, p_b: float) -> str:
    if max(p_a, p_b) < 0.02:
        return "genuine-only"
    if min(p_a, p_b) > 0.98:
        return "poison-only"
    if min(p_a, p_b) <= 0.1 and max(p_a, p_b) >= 0.9:
        return "poison-vs-genuine"
    return "mixed"


def summarise(rows: list) -> dict:
    groups = {kind: [r for r in rows if r["kind"] == kind]
              for kind in ("genuine-only", "poison-vs-genuine", "mixed", "poison-only")}
    # the threshold's real opponents: first splits of genuine-only rows, and among them the unbalanced
    # ones, which only the d' test guards (a balanced split also needs the loss test)
    groups["genuine-only, first split of a class"] = [r for r in groups["genuine-only"] if r["depth"] == 0]
    groups["genuine-only, first split, smaller side < 35 %"] = [
        r for r in groups["genuine-only"] if r["depth"] == 0 and min(r["sizes"]) < 0.35 * sum(r["sizes"])]
    summary = {}
    for kind, members in groups.items():
        d = [r["dprime"] for r in members]
        if d:
            summary[kind] = {"count": len(d), "min": min(d), "max": max(d), "median": float(np.median(d))}
    return summary


#: The models the latent stage's thresholds were calibrated on (the committed results/latent_calibration.json);
#: models trained after them are held out, and ``run_all`` keeps them out of this table.
CALIBRATED_ON = ("fmnist-clean", "fmnist-badnets-10", "fmnist-blended-10", "fmnist-trojan-10", "fmnist-wanet-10",
                 "fmnist-wanet-10-e10", "fmnist-sig-5", "fmnist-badnets-a2a-10", "fmnist-blended-a2a-10",
                 "fmnist-badnets-1", "fmnist-blended-1", "fmnist-wanet-1", "fmnist-badnets-0.5", "fmnist-blended-0.5",
                 "fmnist-wanet-0.5", "fmnist-blended-0.5-e10", "fmnist-wanet-1-e10", "fmnist-wanet-0.5-e10")
CALIBRATED_ON_CIFAR = ("cifar-clean", "cifar-badnets-10", "cifar-trojan-10", "cifar-blended-10", "cifar-wanet-10",
                       "cifar-blended-10-e12", "cifar-wanet-10-e12")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from flare_core.detectors.latent import sample_loss, split_class

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="zoo entries (default: the models the thresholds were calibrated on)")
    p.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder root (for cifar-* entries)")
    args = p.parse_args(argv)
    names = args.models or list(CALIBRATED_ON) + (list(CALIBRATED_ON_CIFAR) if args.cifar else [])
    specs = dict(FMNIST_SPECS)
    if args.cifar:
        specs.update(cifar_specs(args.cifar))
    rows, flags = [], []
    for name in names:
        entry = build(specs[name])
        model, ds = _load(entry, "cpu")
        y = ds.labels
        truth = _truth(entry, len(y))
        P = cached_features(entry, model, ds, CACHE / name)[2]  # computed (and cached) when missing
        loss = sample_loss(cached_logits(name, specs), y)
        for k in SETTINGS:
            flagged = np.zeros(len(y), dtype=bool)
            for c in np.unique(y):
                idx = np.flatnonzero(y == c)
                res = split_class(P[idx], loss[idx], int(c), max_clusters=k, keep_rows=True)
                for s in res.splits:
                    a, b = s.pop("sides")
                    pa, pb = float(truth[idx[a]].mean()), float(truth[idx[b]].mean())
                    la, lb = float(np.median(loss[idx[a]])), float(np.median(loss[idx[b]]))
                    rows.append({"model": name, "max_clusters": k, "class": int(c), **s,
                                 "poison_fraction": [round(pa, 4), round(pb, 4)], "kind": kind_of(pa, pb),
                                 "median_loss": [float(f"{la:.4g}"), float(f"{lb:.4g}")]})
                for i in res.flagged_leaves:
                    flagged[idx[res.leaves[i]]] = True
            n_pos = int(truth.sum())
            tp, fp = int((flagged & truth).sum()), int((flagged & ~truth).sum())
            flags.append({"model": name, "max_clusters": k, "n_poisoned": n_pos, "flagged": int(flagged.sum()),
                          "tpr": round(tp / n_pos, 4) if n_pos else None,
                          "fpr_percent": round(100 * fp / max(int((~truth).sum()), 1), 3)})
            print(name, f"max_clusters={k}", flags[-1], flush=True)
    summary = {str(k): summarise([r for r in rows if r["max_clusters"] == k]) for k in SETTINGS}
    write_json(RESULTS / "latent_calibration.json", {
        "command": "python3 -m benchmarks.latent_calibration MODELS [--cifar ROOT]", "models": names, "machine": machine(), "settings": list(SETTINGS),
        "summary": summary, "latent_stage_alone": flags, "splits": rows})
    for k, s in summary.items():
        for kind, v in s.items():
            print(f"max_clusters={k} {kind:48s} n={v['count']:3d} d' min {v['min']:.2f} median {v['median']:.2f} "
                  f"max {v['max']:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    raise SystemExit(main())
