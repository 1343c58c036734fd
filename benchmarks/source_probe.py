"""Study (not a detector): does the image itself still show the class dirty-label poison came from?

FLARE default misses most of the Fashion-MNIST WaNet poison at 0.5-1 % (25-57 % TPR, benchmarks/NOTES.md):
the model ends up fitting those samples about as well as genuine T-shirts, and their penultimate features
lie close to them.  A warp is subtle, though: a warped sneaker relabelled "T-shirt" still *looks* like a
sneaker.  This study measures that signal, model-free, and a group-level rule on top of it, to say what a
future stage could reach and what it would flag in error.  Nothing here is used by ``flare purify``.

Per model:

1. **probe**: an out-of-fold (5-fold) multinomial logistic regression from the downsampled pixels
   (Fashion-MNIST 14x14; CIFAR-10 3x8x8) to the training labels; each sample gets the probe's
   probability of its own label and of the strongest other class;
2. **confident disagreement**: probability of the label under ``LABEL_P`` (0.05) while one other
   class has over ``OTHER_P`` (0.5);
3. **asymmetric pairs**: count the confident disagreements per ordered pair (label c, probe class s).
   Genuine confusion between look-alike classes runs both ways (shirts <-> T-shirts); all-to-one
   poison adds samples labelled with the target whose pixels say every other class, with no traffic
   back.  A pair is asymmetric when it holds at least ``MIN_COUNT`` (10) samples, ``MIN_RATIO`` (4)
   times the reverse pair's (scaled by class sizes), and a one-sided binomial test of the two counts
   gives p < ``ALPHA`` (1e-4, about 0.01 after the 90 pairs of ten classes);
   ``rule_fitted_better`` keeps only the asymmetric pairs whose members the model fits
   ``FITTED_BETTER`` (2) times better than the rest of their class (median loss): a backdoor is a
   shortcut, while genuine odd samples (a T-shirt that looks like a bag) are the hard ones;
4. the samples of asymmetric pairs are what such a rule would flag (TPR/FPR against the lab's truth),
   reported alone and in union with FLARE default's flags (``--with-flare``, from the cached passes).

    python3 -m benchmarks.source_probe fmnist-clean fmnist-wanet-0.5-e40 --with-flare
    python3 -m benchmarks.source_probe --cifar ROOT cifar-clean   # colour path written, not yet run

Results: ``benchmarks/results/source_probe.json`` (one record per model, merged across runs).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import CACHE, RESULTS, machine, read_json, write_json
from benchmarks.detect_matrix import _load, _truth, cached_features, cached_logits
from benchmarks.zoo import FMNIST_SPECS, build, cifar_specs

logger = logging.getLogger(__name__)
OUT = RESULTS / "source_probe.json"
LABEL_P = 0.05
OTHER_P = 0.5
MIN_COUNT = 10
MIN_RATIO = 4.0
ALPHA = 1e-4
FITTED_BETTER = 2.0
FOLDS = 5


def pixel_matrix(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 images -> (N, D) float32: average-pooled to 14x14 (one channel) or 8x8 (colour)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(images), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    side = 14 if x.shape[1] == 1 else 8
    return F.adaptive_avg_pool2d(x, side).flatten(1).numpy()


def probe_probabilities(Z: np.ndarray, y: np.ndarray, seed: int = 0, folds: int = FOLDS) -> np.ndarray:
    """Out-of-fold class probabilities of a standardised multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    Z = (Z - Z.mean(0)) / (Z.std(0) + 1e-6)
    k = int(y.max()) + 1
    prob = np.zeros((len(y), k))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(Z, y):
        clf = LogisticRegression(max_iter=300).fit(Z[tr], y[tr])
        prob[np.ix_(te, clf.classes_)] = clf.predict_proba(Z[te])
    return prob


def confident_disagreement(prob: np.ndarray, y: np.ndarray) -> tuple:
    """(mask, probe's strongest other class) of samples whose pixels confidently say another class."""
    rows = np.arange(len(y))
    p_label = prob[rows, y]
    other = prob.copy()
    other[rows, y] = -1.0
    return (p_label < LABEL_P) & (other.max(1) > OTHER_P), other.argmax(1)


def asymmetric_pairs(y: np.ndarray, disagree: np.ndarray, other: np.ndarray) -> list:
    """Ordered pairs (label c, pixel class s) with far more confident disagreements than (s, c)."""
    from scipy.stats import binomtest

    k = int(y.max()) + 1
    sizes = np.bincount(y, minlength=k).astype(float)
    M = np.zeros((k, k), dtype=int)
    np.add.at(M, (y[disagree], other[disagree]), 1)
    out = []
    for c in range(k):
        for s in range(k):
            n_cs, n_sc = int(M[c, s]), int(M[s, c])
            if c == s or n_cs < MIN_COUNT:
                continue
            share = sizes[c] / (sizes[c] + sizes[s])  # H0: the same rate per sample both ways
            ratio = (n_cs / sizes[c]) / max(n_sc / sizes[s], 1.0 / sizes[s])
            p = binomtest(n_cs, n_cs + n_sc, share, alternative="greater").pvalue
            out.append({"label": c, "pixels_say": s, "count": n_cs, "reverse": n_sc, "ratio": round(float(ratio), 2),
                        "p": float(f"{p:.3g}"), "asymmetric": bool(ratio >= MIN_RATIO and p < ALPHA)})
    return out


def _rates(flag: np.ndarray, truth: np.ndarray) -> dict:
    tp, fp = int((flag & truth).sum()), int((flag & ~truth).sum())
    return {"flagged": int(flag.sum()), "poisoned": tp, "genuine": fp,
            "tpr": round(tp / truth.sum(), 4) if truth.any() else None,
            "fpr": round(fp / (~truth).sum(), 6)}


def run(spec, with_flare: bool = False, seed: int = 0) -> dict:
    from sklearn.metrics import roc_auc_score

    entry = build(spec)
    model, dataset = _load(entry, "cpu")
    y = np.asarray(dataset.labels)
    truth = _truth(entry, len(y))
    t0 = time.perf_counter()
    prob = probe_probabilities(pixel_matrix(dataset.images), y, seed)
    disagree, other = confident_disagreement(prob, y)
    pairs = asymmetric_pairs(y, disagree, other)
    from flare_core.detectors.latent import fitted_better, sample_loss

    loss = sample_loss(cached_logits(entry, model, dataset, Path(CACHE) / spec.name), y)
    flag = np.zeros(len(y), dtype=bool)
    flag_fitted = np.zeros(len(y), dtype=bool)
    for pr in pairs:
        if pr["asymmetric"]:
            members = disagree & (y == pr["label"]) & (other == pr["pixels_say"])
            rest = (y == pr["label"]) & ~members
            pr["fitted_better"] = round(float(fitted_better(loss[members], loss[rest])), 3)
            pr["poisoned"] = int((members & truth).sum())
            flag |= members
            if pr["fitted_better"] >= FITTED_BETTER:
                flag_fitted |= members
    row = {"model": spec.name, "n": int(len(y)), "n_poisoned": int(truth.sum()),
           "probe_accuracy": round(float((prob.argmax(1) == y).mean()), 4),
           "auroc_probe": round(float(roc_auc_score(truth, -prob[np.arange(len(y)), y])), 4) if truth.any() else None,
           "confident_disagreement": _rates(disagree, truth),
           "asymmetric_pairs": [p for p in pairs if p["asymmetric"]],
           "strongest_refused_pairs": sorted((p for p in pairs if not p["asymmetric"]),
                                             key=lambda p: -p["ratio"])[:5],
           "rule": _rates(flag, truth), "rule_fitted_better": _rates(flag_fitted, truth),
           "seconds": round(time.perf_counter() - t0, 1)}
    if with_flare:
        from benchmarks.detect_matrix import run_our_detector

        cache = Path(CACHE) / spec.name
        X, _, pooled, _ = cached_features(entry, model, dataset, cache)
        logits = cached_logits(entry, model, dataset, cache)
        fl = run_our_detector("flare", X, pooled, y, seed=seed, logits=logits)["flagged"]
        row["flare_default"] = _rates(fl, truth)
        row["union_with_flare"] = _rates(fl | flag, truth)
    row["machine"] = machine()
    row["command"] = f"python3 -m benchmarks.source_probe {spec.name}" + (" --with-flare" if with_flare else "")
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.source_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--with-flare", action="store_true", help="also FLARE default's flags and the union")
    p.add_argument("--cifar", help="CIFAR-10 ImageFolder root (enables the cifar-* models)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    specs = dict(FMNIST_SPECS)
    if args.cifar:
        specs.update(cifar_specs(args.cifar))
    for name in args.models:
        if name not in specs:
            p.error(f"unknown model {name!r}; choose from {', '.join(sorted(specs))}")
    for name in args.models:
        row = run(specs[name], args.with_flare, args.seed)
        logger.info("%s: rule %s, with the loss test %s, pairs %s", name, row["rule"], row["rule_fitted_better"],
                    [(q["label"], q["pixels_say"], q["count"], q["reverse"], q["fitted_better"])
                     for q in row["asymmetric_pairs"]])
        results = read_json(OUT, None) or {"models": {}}  # re-read: runs on other models may have written
        results["models"][name] = row
        results["models"] = dict(sorted(results["models"].items()))
        write_json(OUT, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
