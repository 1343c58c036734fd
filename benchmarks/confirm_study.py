"""What FLARE default's latent cross-check does on each model: by separation, by loss, or off.

FLARE default keeps a group found by its per-layer stage when, in its classes, the group is a population
of its own in the penultimate features (median held-out d' >= ``latent_confirm`` = 4.5, read off
Fashion-MNIST's genuine outlier clumps) or when the model fits the group's main class part
``latent_confirm_loss`` (100; 10 until session 7) times better than the rest of that class (the backdoor's loss signature; a
group too small for a held-out d' needs it).  The loss rule came from this study: with the separation test
alone, CIFAR-10 WaNet (12 epochs) lost a group holding 72 % of the poison.  This records, per zoo model,
FLARE default, the separation test alone (``latent_confirm_loss=0``: small groups kept unchecked) and the
cross-check off (``latent_confirm=0``), their TPR / FPR, and for every group tested its d', loss ratio and
which rule kept it.

    python3 -m benchmarks.confirm_study fmnist-clean fmnist-blended-a2a-10 [--cifar ROOT cifar-wanet-10-e12 ...]
    # -> benchmarks/results/confirm_study.json (one entry per model, merged with earlier runs)
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import CACHE, RESULTS, read_json, write_json
from benchmarks.detect_matrix import _load, _truth, cached_features, cached_logits
from benchmarks.zoo import FMNIST_SPECS, build, cifar_specs
from flare_core.detectors.latent import DEFAULT_CONFIRM_LOSS_RATIO


def _rates(flagged: np.ndarray, truth: np.ndarray) -> dict:
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    return {"flagged": int(flagged.sum()),
            "tpr": round(float((flagged & truth).sum()) / n_pos, 4) if n_pos else None,
            "fpr_percent": round(100.0 * float((flagged & ~truth).sum()) / max(n_neg, 1), 3)}


def study(name: str, specs: dict) -> dict:
    from flare_core.detectors.flare import flare_detect
    from flare_core.detectors.latent import sample_loss

    entry = build(specs[name])
    model, ds = _load(entry, "cpu")
    X, _, pooled, _ = cached_features(entry, model, ds, CACHE / name)
    logits = cached_logits(entry, model, ds, CACHE / name)
    y, truth = ds.labels, _truth(entry, len(ds))
    loss = sample_loss(logits, y)
    default = flare_detect(X, y, latent=pooled, logits=logits, random_state=0)
    if not default.evidence["latent"].get("layer_groups_checked"):
        # no per-layer group reached the cross-check: the three settings flag the same samples by construction
        same = _rates(default.flagged, truth)
        return {"model": name, "default": same, "separation_only": same, "cross_check_off": same,
                "groups_checked": []}
    separation = flare_detect(X, y, latent=pooled, logits=logits, random_state=0, latent_confirm_loss=0)
    off = flare_detect(X, y, latent=pooled, logits=logits, random_state=0, latent_confirm=0)
    groups = []
    for rec in default.evidence["latent"].get("layer_groups_checked") or []:
        members = off.flagged & (off.clusters == rec["group"])
        if not members.any():
            continue
        c = int(np.bincount(y[members]).argmax())  # the group's largest class part
        part, rest = members & (y == c), ~members & (y == c)
        groups.append({**rec, "poison_share": round(float(truth[members].mean()), 4), "main_class": c,
                       "main_part_median_loss": float(f"{np.median(loss[part]):.4g}"),
                       "rest_of_class_median_loss": float(f"{np.median(loss[rest]):.4g}") if rest.any() else None})
    return {"model": name, "default": _rates(default.flagged, truth),
            "separation_only": _rates(separation.flagged, truth), "cross_check_off": _rates(off.flagged, truth),
            "groups_checked": groups}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder root (for cifar-* entries)")
    args = p.parse_args(argv)
    specs = dict(FMNIST_SPECS)
    if args.cifar:
        specs.update(cifar_specs(args.cifar))
    out = RESULTS / "confirm_study.json"
    for name in args.models:
        row = study(name, specs)
        print(row, flush=True)
        # re-read before writing: runs for other models may be writing the same file
        done = {r["model"]: r for r in (read_json(out, None) or {}).get("rows", [])}
        done[name] = dict(row, latent_confirm_loss=DEFAULT_CONFIRM_LOSS_RATIO)
        write_json(out, {"command": "python3 -m benchmarks.confirm_study MODELS [--cifar ROOT]",
                         "rows": [done[k] for k in sorted(done)]})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    raise SystemExit(main())
