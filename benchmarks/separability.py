"""Is the poison *there* in each representation? A supervised upper bound, to explain FLARE's misses.

For each zoo model, a 3-fold cross-validated logistic regression predicts "poisoned" from

* ``layers``: FLARE's N x L per-layer abnormality matrix (what the published method clusters);
* ``channels``: the per-channel view of the same pass (per channel of every BN input, log of its
  largest ``|z|``; ``extract_abnormality_features(channels=True)``);
* ``pooled (target class)``: the penultimate features of the target class only (where the classic
  per-class defences look),

and reports the held-out AUROC (1.0 = a linear cut separates poison perfectly; 0.5 = no signal).
The detectors are unsupervised; this only says whether a representation carries the signal at all.
A random stratified subset of ``--n`` samples keeps it to minutes on the 2-core CPU.

    python3 -m benchmarks.separability fmnist-blended-10 fmnist-wanet-10 fmnist-badnets-10
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import CACHE, RESULTS, machine, read_json, write_json
from benchmarks.detect_matrix import _load, _truth, cached_features
from benchmarks.zoo import FMNIST_SPECS, build


def cv_auroc(X: np.ndarray, truth: np.ndarray, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    cv = StratifiedKFold(3, shuffle=True, random_state=seed)
    p = cross_val_predict(clf, X, truth, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(truth, p))


def run(name: str, n: int = 15000, seed: int = 0) -> dict:
    from flare_core.features import extract_abnormality_features

    entry = build(FMNIST_SPECS[name])
    model, dataset = _load(entry, "cpu")
    truth = _truth(entry, len(dataset))
    X, layers, pooled, _ = cached_features(entry, model, dataset, Path(CACHE) / name)
    y = np.asarray(dataset.labels)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(len(y), min(n, len(y)), replace=False))
    feats = extract_abnormality_features(model, dataset.subset(sub), channels=True)
    channels = np.log(np.asarray(feats.channels, dtype=np.float64) + 1e-3)
    target = FMNIST_SPECS[name].target
    in_target = y == target
    row = {
        "model": name, "n_subset": int(len(sub)), "n_poisoned_subset": int(truth[sub].sum()),
        "layers_columns": int(X.shape[1]), "channel_columns": int(channels.shape[1]),
        "auroc_layers": cv_auroc(np.asarray(X)[sub], truth[sub], seed),
        "auroc_channels": cv_auroc(channels, truth[sub], seed),
        "auroc_pooled_target_class": cv_auroc(np.asarray(pooled)[in_target], truth[in_target], seed),
        "command": f"python3 -m benchmarks.separability {name}",
    }
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.separability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--n", type=int, default=15000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = RESULTS / "separability.json"
    rows = {r["model"]: r for r in (read_json(out, {}) or {}).get("rows", [])}
    for name in args.models:
        rows[name] = run(name, args.n)
        print(rows[name])
        write_json(out, {"what": __doc__.split("\n\n")[0], "machine": machine(), "rows": list(rows.values())})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
