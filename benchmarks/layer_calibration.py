"""Would FLARE default's latent stage work on a middle layer too? Its first split of every class, per layer.

The latent stage (flare_core.detectors.latent) splits each class in the model's penultimate features and
accepts a split at held-out d' >= 6.5, a threshold read off the penultimate features of the Fashion-MNIST
zoo (benchmarks.latent_calibration).  Some poison separates better in a middle layer (Blended 0.5 % at 10
epochs: d' 5.8 in the penultimate features, 7.3-7.9 in the middle layers; benchmarks.latent_diagnosis).
Before the stage may look there, the splits of genuine-only classes in those layers have to be known: this
records, for every hidden layer's globally pooled activations (list_layers order, then the penultimate
features), the first split the stage would test in every class, its held-out d' and the poison share of
both sides.  A measurement for the next detector change, not a detector.

    python3 -m benchmarks.layer_calibration fmnist-clean fmnist-blended-0.5-e10   # -> results/layer_calibration.json
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import RESULTS, machine, read_json, write_json
from benchmarks.detect_matrix import _truth
from benchmarks.latent_calibration import kind_of
from benchmarks.zoo import FMNIST_SPECS, build


def first_splits(name: str) -> list:
    """One record per (layer, class): the first split the latent stage tests there."""
    from flare_core.data import load_dataset
    from flare_core.detectors.latent import MIN_SPLIT_ROWS, split_class
    from flare_core.features import extract_pooled_features, list_layers
    from flare_core.models import load_model

    entry = build(FMNIST_SPECS[name])
    model, ds = load_model(entry.model), load_dataset(entry.train)
    truth = _truth(entry, len(ds))
    rows = []
    for layer in [info.name for info in list_layers(model)] + [None]:
        P, lname = extract_pooled_features(model, ds, layer=layer)
        for c in np.unique(ds.labels):
            idx = np.flatnonzero(ds.labels == c)
            if len(idx) < MIN_SPLIT_ROWS:
                continue
            res = split_class(P[idx], np.ones(len(idx)), int(c), max_depth=1, keep_rows=True)
            s = res.splits[0]
            a, b = s.pop("sides")
            pa, pb = float(truth[idx[a]].mean()), float(truth[idx[b]].mean())
            rows.append({"model": name, "layer": lname, "class": int(c), "sizes": s["sizes"], "dprime": s["dprime"],
                         "candidate": s.get("candidate"), "poison_fraction": [round(pa, 4), round(pb, 4)],
                         "kind": kind_of(pa, pb)})
            print(rows[-1], flush=True)
    return rows


def summarise(rows: list) -> dict:
    """Per layer: the largest first-split d' of a genuine-only class, and the poison-vs-genuine splits' d'."""
    out: dict = {}
    for r in rows:
        cell = out.setdefault(r["layer"], {"genuine_only_max_dprime": None, "poison_vs_genuine_dprime": []})
        if r["kind"] == "genuine-only":
            cell["genuine_only_max_dprime"] = max(cell["genuine_only_max_dprime"] or 0.0, r["dprime"])
        elif r["kind"] == "poison-vs-genuine":
            cell["poison_vs_genuine_dprime"].append(r["dprime"])
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="Fashion-MNIST zoo entries")
    args = p.parse_args(argv)
    out = RESULTS / "layer_calibration.json"
    prev = read_json(out, None) or {}
    rows = [r for r in prev.get("splits", []) if r["model"] not in args.models]
    for name in args.models:
        rows += first_splits(name)
    write_json(out, {"command": "python3 -m benchmarks.layer_calibration MODELS", "machine": machine(),
                     "models": sorted({r["model"] for r in rows}), "summary": summarise(rows), "splits": rows})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    raise SystemExit(main())
