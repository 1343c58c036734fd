"""Why the latent stage did or did not find a model's poison: in the target class's penultimate features
(cached by benchmarks.detect_matrix), the supervised held-out d' of poisoned vs genuine samples (PCA(20) of
the robust-standardised features, as the stage sees them), their median losses, and the splits the stage
tested.  A poison the model learnt as a shortcut is far apart and fitted far better; one it did not learn is
neither, and no detector that reads the model can be expected to find it.

    python3 -m benchmarks.latent_diagnosis cifar-badnets-10 cifar-blended-10 cifar-wanet-10 --cifar ROOT
    python3 -m benchmarks.latent_diagnosis fmnist-wanet-1-e10 --layers   # + every hidden layer's separation
    # -> benchmarks/results/latent_diagnosis.json (one entry per model, merged with earlier runs)
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import CACHE, RESULTS, read_json, write_json
from benchmarks.detect_matrix import _truth
from benchmarks.zoo import FMNIST_SPECS, build, cifar_specs


def diagnose(name: str, specs: dict) -> dict:
    from sklearn.decomposition import PCA

    from flare_core.detectors import latent as LT

    entry = build(specs[name])
    P = np.load(CACHE / name / "pooled.npy")
    y = np.load(entry.train)["y"]
    loss = LT.sample_loss(np.load(CACHE / name / "logits.npy"), y)
    truth = _truth(entry, len(y))
    target = entry.spec.target
    rows = np.flatnonzero(y == target)
    F = PCA(LT.DEFAULT_COMPONENTS, random_state=0).fit_transform(LT._robust_standardize(P[rows].astype(np.float64)))
    res = LT.split_class(P[rows], loss[rows], int(target))
    missed = _missed(entry, res, rows, truth, np.load(CACHE / name / "logits.npy"), loss)
    return {"model": name, "target_class": int(target), "n_class": int(len(rows)),
            "n_poisoned_in_class": int(truth[rows].sum()),
            "supervised_heldout_dprime": round(LT.heldout_dprime(F, truth[rows], 0), 3),
            "median_loss_poisoned": float(f"{np.median(loss[truth]):.4g}"),
            "median_loss_genuine_in_class": float(f"{np.median(loss[rows][~truth[rows]]):.4g}"),
            "splits_tested": [{"sizes": s["sizes"], "dprime": s["dprime"], "accepted": s["accepted"]} for s in res.splits],
            "stage_reason": res.reason, "missed_by_the_stage": missed}


def layer_separation(name: str, specs: dict) -> dict:
    """Per hidden layer (list_layers order, then the penultimate features): the supervised held-out d' of
    the target class's poisoned vs genuine samples in that layer's globally pooled activations, and the
    d' of the first split the latent stage would test there: would the stage find the poison on another
    layer?"""
    from sklearn.decomposition import PCA

    from flare_core.data import load_dataset
    from flare_core.detectors import latent as LT
    from flare_core.features import extract_pooled_features, list_layers
    from flare_core.models import load_model

    entry = build(specs[name])
    model, ds = load_model(entry.model), load_dataset(entry.train)
    truth = _truth(entry, len(ds))
    rows = np.flatnonzero(ds.labels == entry.spec.target)
    sub = ds.subset(rows)
    out = {}
    for layer in [info.name for info in list_layers(model)] + [None]:
        P, lname = extract_pooled_features(model, sub, layer=layer)
        k = min(LT.DEFAULT_COMPONENTS, P.shape[1] - 1)
        F = PCA(k, random_state=0).fit_transform(LT._robust_standardize(P.astype(np.float64)))
        first = LT.split_class(P, np.ones(len(P)), int(entry.spec.target)).splits
        out[lname] = {"dim": int(P.shape[1]), "supervised_heldout_dprime": round(LT.heldout_dprime(F, truth[rows], 0), 3),
                      "first_split_dprime": first[0]["dprime"] if first else None}
    return out


def _missed(entry, res, rows: np.ndarray, truth: np.ndarray, logits: np.ndarray, loss: np.ndarray) -> dict:
    """The target-class poison the stage left unflagged: how many, from which source classes, how the model
    fits and predicts it (against the genuine samples of the class)."""
    from flare_core.attacks import GroundTruth

    flagged = np.zeros(len(truth), dtype=bool)
    for i in res.flagged_leaves:
        flagged[rows[res.leaves[i]]] = True
    in_class = np.zeros(len(truth), dtype=bool)
    in_class[rows] = True
    left = np.flatnonzero(truth & in_class & ~flagged)
    gt = GroundTruth.from_json(entry.ground_truth)
    source = dict(zip(gt.poisoned_indices.tolist(), gt.original_labels.tolist()))
    by_source: dict = {}
    for i in left:
        by_source[str(source[int(i)])] = by_source.get(str(source[int(i)]), 0) + 1
    genuine = in_class & ~truth
    return {"n": int(len(left)), "by_source_class": dict(sorted(by_source.items(), key=lambda kv: -kv[1])),
            "median_loss": float(f"{np.median(loss[left]):.4g}") if len(left) else None,
            "median_loss_genuine_in_class": float(f"{np.median(loss[genuine]):.4g}"),
            "predicted_as_target": round(float((logits[left].argmax(1) == entry.spec.target).mean()), 3)
            if len(left) else None,
            "n_genuine_flagged_in_class": int((flagged & genuine).sum())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder root (for cifar-* entries)")
    p.add_argument("--layers", action="store_true",
                   help="also the poison's separation in every hidden layer's pooled activations (a pass per layer)")
    args = p.parse_args(argv)
    specs = dict(FMNIST_SPECS)
    if args.cifar:
        specs.update(cifar_specs(args.cifar))
    out = RESULTS / "latent_diagnosis.json"
    done = {r["model"]: r for r in (read_json(out, None) or {}).get("rows", [])}
    for name in args.models:
        before = done.get(name) or {}
        done[name] = diagnose(name, specs)
        if args.layers:
            done[name]["per_layer"] = layer_separation(name, specs)
        elif "per_layer" in before:  # kept from the run that measured it
            done[name]["per_layer"] = before["per_layer"]
        print(done[name])
    write_json(out, {"command": "python3 -m benchmarks.latent_diagnosis MODELS [--cifar ROOT]",
                     "rows": [done[k] for k in sorted(done)]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
