"""What the tail-group stage's one-feature bar changes (session 17): every cached model, the stage with it
and without it.

The island rule (``flare_core/detectors/tail_groups.py``) refuses an island whose deviation from its class
lies over ``DEFAULT_MAX_ONE_FEATURE_SHARE`` (90 %) in a single penultimate feature.  This runs
:func:`tail_group_detect` on each cached model's penultimate features and logits twice, with the bar and
with it off (``max_one_feature_share=1.0``), and records per model what the stage flags either way, how
much of it is poisoned, and the groups the bar refused; plus, over every candidate cluster, the shares of
the poisoned and the genuine ones that pass the other three island bars (how far the bar is from each).

It reads the caches ``benchmarks.detect_matrix`` writes (``pooled.npy``, ``logits.npy``); it does not run
the other stages, so it says what the stage would add *where it runs* (FLARE default runs it when the other
stages flagged under 1 %).

    python3 -m benchmarks.one_feature_check [MODELS ...] [--cifar ROOT]   # -> results/one_feature_check.json
    python3 -m benchmarks.one_feature_check --sd-floor 0 [--cifar ROOT]    # the stage before session 19's
                                                                            # floor -> ..._floor0.json
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import RESULTS, write_json
from benchmarks.detect_matrix import CACHE, cached_arrays
from benchmarks.zoo import FMNIST_SPECS, cifar_specs

logger = logging.getLogger("benchmarks.one_feature_check")


def passes_other_island_bars(r: dict) -> bool:
    from flare_core.detectors import tail_groups as TG

    return (r["purity"] >= TG.DEFAULT_MIN_PURITY and r["island"] >= TG.DEFAULT_MIN_ISLAND
            and r["atypicality"] >= TG.DEFAULT_MIN_ATYPICALITY)


def floored_columns(P: np.ndarray, y: np.ndarray, sd_floor: float) -> int:
    """How many (class, feature) columns the floor raises: 1.4826 MAD under ``sd_floor`` x SD in the class
    (0 means the floored stage standardises exactly as the plain one, so it cannot flag differently)."""
    from benchmarks.atypicality_floor import mad_to_sd_ratios

    return int(np.sum(mad_to_sd_ratios(P, y) < sd_floor))


def model_check(name: str, specs: dict, cache: Path = CACHE, sd_floor: Optional[float] = None) -> dict:
    """The stage on one cached model with the one-feature bar and without it; ``sd_floor``: the stage's
    floor on each column's robust scale (:data:`.tail_groups.TAIL_SD_FLOOR`)."""
    from flare_core.detectors import tail_groups as TG
    from flare_core.detectors.scoring import class_atypicality

    sd_floor = TG.TAIL_SD_FLOOR if sd_floor is None else sd_floor
    y, truth, P, logits = cached_arrays(name, specs, cache)
    if logits is None:
        raise FileNotFoundError(f"{Path(cache) / name / 'logits.npy'} is missing: run benchmarks.detect_matrix {name} first.")
    atyp = class_atypicality(P, y)
    out = {"model": name, "n": len(y), "n_poisoned": int(truth.sum()), "sd_floor": sd_floor,
           "floored_columns": floored_columns(P, y, sd_floor) if sd_floor > 0 else 0}
    evidence = {}
    for key, rule in (("with_bar", {}), ("without_bar", {"max_one_feature_share": 1.0})):
        flagged, _, ev = TG.tail_group_detect(P, y, atyp, logits=logits, sd_floor=sd_floor, **rule)
        out[key] = {"flagged": int(flagged.sum()), "poisoned": int((flagged & truth).sum())}
        evidence[key] = ev
    refused = []
    for c, ev in evidence["without_bar"].items():
        kept_with = {(r["size"], r["purity"], r["island"]) for r in evidence["with_bar"][c]["kept"]}
        for r in ev["kept"]:
            if (r["size"], r["purity"], r["island"]) not in kept_with:
                refused.append({"class": int(c), **{k: r[k] for k in ("size", "purity", "island", "atypicality",
                                                                        "one_feature_share", "rule")}})
    out["refused_groups"] = refused
    # every HDBSCAN candidate's share with its poisoned share, to see how far the bar is from each side
    idx_by_class = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    other = TG.strongest_other_class(logits, y)
    misfit = np.argmax(logits, axis=1) != y
    cands = []
    for c, idx in idx_by_class.items():
        _, _, records = TG.tail_groups_in_class(P[idx], atyp[idx], other=other[idx], misfit=misfit[idx],
                                                keep_rows=True, sd_floor=sd_floor)
        for r in records:
            if r.get("candidate") == "misfit":
                continue
            members = idx[r.pop("rows")]
            cands.append({"class": int(c), **{k: r[k] for k in ("size", "purity", "island", "atypicality",
                                                                  "one_feature_share", "kept", "rule")},
                          "poisoned_share": round(float(truth[members].mean()), 3)})
    out["candidates"] = cands
    return out


def summary(models: list) -> dict:
    cands = [c for m in models for c in m["candidates"]]
    island_like = [c for c in cands if passes_other_island_bars(c)]
    poisoned = [c["one_feature_share"] for c in island_like if c["poisoned_share"] >= 0.5]
    genuine = [c["one_feature_share"] for c in island_like if c["poisoned_share"] < 0.5]
    return {"models": len(models), "candidates": len(cands),
            "island_like_poisoned": len(poisoned),
            "island_like_poisoned_max_share": max(poisoned) if poisoned else None,
            "island_like_genuine": len(genuine),
            "island_like_genuine_min_share": min(genuine) if genuine else None,
            "genuine_share_quantiles": (np.round(np.percentile([c["one_feature_share"] for c in cands
                                                                if c["poisoned_share"] < 0.5],
                                                               [10, 50, 90]), 3).tolist() if cands else None),
            "changed_models": [m["model"] for m in models if m["with_bar"] != m["without_bar"]],
            "models_with_floored_columns": [m["model"] for m in models if m.get("floored_columns")],
            "flagged_with_bar": sum(m["with_bar"]["flagged"] for m in models),
            "flagged_without_bar": sum(m["without_bar"]["flagged"] for m in models),
            "poisoned_with_bar": sum(m["with_bar"]["poisoned"] for m in models),
            "poisoned_without_bar": sum(m["without_bar"]["poisoned"] for m in models)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.one_feature_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="zoo entries (default: every model with cached features and logits)")
    p.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder root (adds the cached cifar-* entries)")
    p.add_argument("--sd-floor", type=float, default=None,
                   help="run the stage with this floor on each column's robust scale (share of its SD); "
                        "default the stage's own (tail_groups.TAIL_SD_FLOOR, 0.2); 0: the plain robust z-score "
                        "of sessions 8-18")
    p.add_argument("--out", default=None, help="default results/one_feature_check.json, or "
                                               "results/one_feature_check_floor<F>.json with another --sd-floor F")
    p.add_argument("--merge", action="store_true", help="keep the other models already in OUT (re-run only these)")
    args = p.parse_args(argv)
    from flare_core.detectors.tail_groups import TAIL_SD_FLOOR

    own_floor = args.sd_floor is None or args.sd_floor == TAIL_SD_FLOOR
    args.sd_floor = TAIL_SD_FLOOR if args.sd_floor is None else args.sd_floor
    if args.out is None:
        args.out = str(RESULTS / ("one_feature_check.json" if own_floor
                                  else f"one_feature_check_floor{args.sd_floor:g}.json"))
    specs = dict(FMNIST_SPECS)
    if args.cifar:
        specs.update(cifar_specs(args.cifar))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = args.models or [n for n in specs if (Path(CACHE) / n / "pooled.npy").is_file()
                            and (Path(CACHE) / n / "logits.npy").is_file()]
    models = []
    if args.merge and Path(args.out).is_file():
        from benchmarks.common import read_json

        models = [m for m in read_json(Path(args.out))["models"] if m["model"] not in names]
    for n in names:
        models.append(model_check(n, specs, sd_floor=args.sd_floor))
        m = models[-1]
        logger.info("%s: with the bar %s, without %s, %d group(s) refused", n, m["with_bar"], m["without_bar"],
                    len(m["refused_groups"]))
    by_dataset = {ds: summary([m for m in models if m["model"].startswith(ds)]) for ds in ("fmnist", "cifar")}
    models.sort(key=lambda m: m["model"])
    command = ("python3 -m benchmarks.one_feature_check" + (" --cifar ROOT" if args.cifar else "")
               + ("" if own_floor else f" --sd-floor {args.sd_floor:g}"))
    write_json(Path(args.out), {"command": command, "summary": by_dataset, "models": models})
    for ds, s in by_dataset.items():
        print(f"{ds}: {s['models']} models, {s['candidates']} candidates; passing the other island bars: "
              f"{s['island_like_poisoned']} poisoned (max share {s['island_like_poisoned_max_share']}), "
              f"{s['island_like_genuine']} genuine (min share {s['island_like_genuine_min_share']}); "
              f"flagged {s['flagged_without_bar']} -> {s['flagged_with_bar']} "
              f"(poisoned {s['poisoned_without_bar']} -> {s['poisoned_with_bar']}); changed: {s['changed_models']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
