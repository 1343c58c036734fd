"""Calibration of FLARE default's tail-group stage (flare_core/detectors/tail_groups.py).

For every cached Fashion-MNIST model (penultimate features in ``benchmarks/cache/<model>/``, written by
``benchmarks.detect_matrix``), every class is clustered as the stage does it and every candidate cluster's
statistics (size, purity, island, median atypicality) are recorded with the share of it that is poisoned.
With the model's logits cached, each candidate also has its relabelled statistics (the strongest other
classes of its members, their share, and their share in the rest of the class) and the rule that kept it,
and the misfit groups (the samples of a class the model classifies as one other class, step 3b) are
candidates too, summarised apart (``misfit``).
The summary says how close the genuine clusters come to the stage's bars and how much poison the kept
clusters hold, separately for the models the bars were chosen on and the ones checked after.

    python3 -m benchmarks.detect_matrix MODELS ... --detectors flare   # fills the caches
    python3 -m benchmarks.tail_calibration                              # -> results/tail_calibration.json
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import RESULTS, write_json
from benchmarks.detect_matrix import CACHE, _load, _truth
from benchmarks.zoo import FMNIST_SPECS, build, cifar_specs

logger = logging.getLogger("benchmarks.tail_calibration")

#: The models the bars were chosen on (session 8); every other cached model was checked after.
CHOSEN_ON = ["fmnist-clean", "fmnist-clean-gn", "fmnist-wanet-0.5-e10", "fmnist-sig-0.5-e10",
             "fmnist-blended-a2a-0.5-e10", "fmnist-badnets-a2a-0.5-e10", "fmnist-wanet-0.5-e20",
             "fmnist-blended-0.5", "fmnist-blended-0.5-e10", "fmnist-wanet-1-e10"]
STATS = ("size", "purity", "island", "atypicality")


def model_candidates(name: str, cache: Path = CACHE, specs: Optional[dict] = None) -> list:
    """One row per candidate cluster of every class of the cached model ``name``."""
    from flare_core.detectors import tail_groups as TG
    from flare_core.detectors.scoring import class_atypicality

    entry = build((specs or FMNIST_SPECS)[name])
    _, dataset = _load(entry, "cpu")
    y = np.asarray(dataset.labels)
    truth = _truth(entry, len(y))
    P = np.load(Path(cache) / name / "pooled.npy")
    logits_path = Path(cache) / name / "logits.npy"
    logits = np.load(logits_path) if logits_path.is_file() else None
    other = TG.strongest_other_class(logits, y) if logits is not None else None
    misfit = np.argmax(logits, axis=1) != y if logits is not None else None
    atyp = class_atypicality(P, y)
    rows = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        _, _, records = TG.tail_groups_in_class(P[idx], atyp[idx], keep_rows=True,
                                                other=None if other is None else other[idx],
                                                misfit=None if misfit is None else misfit[idx])
        for r in records:
            members = idx[r.pop("rows")]
            rows.append({"model": name, "class": int(c), **r, "poisoned": int(truth[members].sum()),
                         "poisoned_share": round(float(truth[members].mean()), 3),
                         "class_poisoned": int(truth[idx].sum())})
    return rows


def misfit_summary(rows: list) -> dict:
    """The misfit candidates (step 3b): how close the genuine ones come to the misfit rule's bars (among
    those under its base bar, the smallest ratio of purity and island to their bars), and what was kept."""
    from flare_core.detectors import tail_groups as TG

    genuine = [r for r in rows if r["poisoned_share"] < 0.5]
    poison = [r for r in rows if r["poisoned_share"] >= 0.5]

    def margin(r):
        return min(r["purity"] / TG.DEFAULT_MIN_MISFIT_PURITY, r["island"] / TG.DEFAULT_MIN_MISFIT_ISLAND)
    low_base = [r for r in genuine if r.get("other_base", 1.0) < TG.DEFAULT_MAX_MISFIT_BASE]
    return {"candidates": len(rows), "genuine": len(genuine), "poisoned": len(poison),
            "genuine_kept": [r for r in genuine if r["kept"]],
            "genuine_closest": sorted(({**r, "margin": round(margin(r), 3)} for r in low_base),
                                      key=lambda r: -r["margin"])[:5],
            "genuine_tightest": sorted(genuine, key=lambda r: -r["purity"])[:3],
            "poisoned_kept": sum(r["kept"] for r in poison),
            "poison_in_kept": sum(r["poisoned"] for r in rows if r["kept"]),
            "genuine_in_kept": sum(r["size"] - r["poisoned"] for r in rows if r["kept"])}


def summary(rows: list) -> dict:
    misfits = [r for r in rows if r.get("candidate") == "misfit"]
    rows = [r for r in rows if r.get("candidate") != "misfit"]
    genuine = [r for r in rows if r["poisoned_share"] < 0.5]
    poison = [r for r in rows if r["poisoned_share"] >= 0.5]

    def closest(rs):  # the genuine clusters nearest to passing: by the smallest of their bar ratios
        from flare_core.detectors import tail_groups as TG

        def margin(r):
            return min(r["purity"] / TG.DEFAULT_MIN_PURITY, r["island"] / TG.DEFAULT_MIN_ISLAND,
                       r["atypicality"] / TG.DEFAULT_MIN_ATYPICALITY)
        return sorted(({**r, "margin": round(margin(r), 3)} for r in rs), key=lambda r: -r["margin"])[:5]

    def closest_relabelled(rs):  # the genuine clusters nearest to the relabelled rule: smallest other_base
        return sorted((r for r in rs if "other_base" in r), key=lambda r: r["other_base"])[:5]

    return {"candidates": len(rows), "genuine": len(genuine), "poisoned": len(poison),
            "genuine_kept": [r for r in genuine if r["kept"]], "genuine_closest": closest(genuine),
            "genuine_closest_relabelled": closest_relabelled(genuine),
            "poisoned_kept_by_rule": {rule: sum(1 for r in poison if r.get("rule") == rule)
                                      for rule in ("island", "relabelled")},
            "poisoned_kept": sum(r["kept"] for r in poison),
            "poison_in_kept": sum(r["poisoned"] for r in rows if r["kept"]),
            "genuine_in_kept": sum(r["size"] - r["poisoned"] for r in rows if r["kept"]),
            "misfit": misfit_summary(misfits)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.tail_calibration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="zoo entries (default: every model with a cache)")
    p.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder root (adds the cached cifar-* entries: "
                                                 "a dataset the bars were not chosen on)")
    args = p.parse_args(argv)
    specs = dict(FMNIST_SPECS)
    if args.cifar:
        specs.update(cifar_specs(args.cifar))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = args.models or [n for n in specs if (Path(CACHE) / n / "pooled.npy").is_file()]
    rows = []
    for n in names:
        rows += model_candidates(n, specs=specs)
        logger.info("%s: %d candidate clusters so far", n, len(rows))
    chosen = [r for r in rows if r["model"] in CHOSEN_ON]
    after = [r for r in rows if r["model"] not in CHOSEN_ON and not r["model"].startswith("cifar")]
    cifar = [r for r in rows if r["model"].startswith("cifar")]
    command = "python3 -m benchmarks.tail_calibration" + (" --cifar ROOT" if args.cifar else "")
    out = {"command": command, "models": names, "chosen_on": summary(chosen), "checked_after": summary(after),
           "cifar": summary(cifar), "all": summary(chosen + after), "rows": rows}
    write_json(RESULTS / "tail_calibration.json", out)
    for k in ("chosen_on", "checked_after", "cifar"):
        s = out[k]
        print(f"{k}: {s['candidates']} candidates ({s['genuine']} genuine, {s['poisoned']} poisoned); "
              f"genuine kept {len(s['genuine_kept'])}; poisoned kept {s['poisoned_kept']} "
              f"({s['poison_in_kept']} poisoned + {s['genuine_in_kept']} genuine samples)")
        m = s["misfit"]
        print(f"  misfit groups: {m['candidates']} candidates ({m['genuine']} genuine, {m['poisoned']} poisoned); "
              f"genuine kept {len(m['genuine_kept'])}; poisoned kept {m['poisoned_kept']} "
              f"({m['poison_in_kept']} poisoned + {m['genuine_in_kept']} genuine samples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
