"""Exploratory (not part of RESULTS.md's matrix): what a per-class 2-means split of the penultimate
features sees, per class, for the next FLARE default stage (see NOTES.md "Next step for Blended/WaNet").

Per class: robust-standardised pooled penultimate features -> PCA(10) -> 2-means; for each side its
size, poison fraction, median softmax confidence in its label, and the held-out Fisher overlap / tail
excess of :func:`flare_core.detectors.decision.heldout_separation`.  Needs the cached features and
``logits.npy`` (written by this script when missing) of the zoo models.

    python3 -m benchmarks.explore_latent_split fmnist-blended-10 fmnist-wanet-10 fmnist-clean
"""
import os
import sys

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from benchmarks.common import CACHE
from benchmarks.detect_matrix import _load, _truth
from benchmarks.zoo import FMNIST_SPECS, build
from flare_core.detectors.decision import heldout_separation
from flare_core.detectors.preprocess import robust_standardize


def main(names):
    from flare_core.models.training import predict_logits

    for name in names:
        entry = build(FMNIST_SPECS[name])
        y = np.load(entry.train)["y"]
        t = _truth(entry, len(y))
        P = np.load(CACHE / name / "pooled.npy")
        lp = CACHE / name / "logits.npy"
        if not lp.exists():
            model, ds = _load(entry, "cpu")
            np.save(lp, np.asarray(predict_logits(model, ds.images)))
        L = np.load(lp)
        z = L - L.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        conf = p[np.arange(len(y)), y]
        print("==", name)
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            Z, _, _ = robust_standardize(P[idx])
            Zp = PCA(10, random_state=0).fit_transform(Z)
            lab = KMeans(2, n_init=5, random_state=0).fit_predict(Zp)
            a, b = lab == 0, lab == 1
            ov1, ex1 = heldout_separation(Zp, a, b, 0)
            ov2, ex2 = heldout_separation(Zp, b, a, 0)
            print(f" class {c}: sizes {a.sum()}/{b.sum()} poison {t[idx][a].mean():.2f}/{t[idx][b].mean():.2f}"
                  f" conf_med {np.median(conf[idx][a]):.4f}/{np.median(conf[idx][b]):.4f}"
                  f" overlap {ov1:.3f}/{ov2:.3f} excess {ex1:.1f}/{ex2:.1f}")


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    main(sys.argv[1:])
