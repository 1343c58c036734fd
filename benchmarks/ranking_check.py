"""A study, not a stage: would folding Spectral Signatures' score into FLARE default's ranking of the samples
it does not flag rank the poison better?

Where FLARE default flags little or nothing, its scores rank the unflagged samples by their class atypicality
(:func:`flare_core.detectors.scoring.class_atypicality`: how far a sample lies from its class in the
penultimate features, every direction weighed alike).  Spectral Signatures scores a sample by its squared
projection on its class's top singular direction (divided by the class median), which weighs the one
direction the class's spread is concentrated in: where a poison population sits in one class along that
direction (session 19: CIFAR-10 Blended 1 % trained 30 epochs, SS AUROC 0.983 against FLARE's 0.920), SS
ranks it better.  This measures, per cached model, the AUROC of the poison under each score alone and under
the mean of their ranks (``mean_rank``), over *all* samples (what the ranking would be if nothing were
flagged; FLARE default puts its flags first, so on rows it finds whole these numbers do not move its AUROC).

Where a class holds a minority mode, it also runs FLARE default's trigger test of the mode
(:mod:`flare_core.features.mode_trigger`: the members' mean image difference put on other classes' images;
``moved_in`` / ``moved_in_control``), and with ``--all-classes`` the same test of every other class's lighter
mixture component (groups the stage never tests: how often a genuine group's difference acts as a trigger).

    python3 -m benchmarks.ranking_check MODELS ... [--cifar ROOT] [--build] [--merge] [--all-classes]
    # -> benchmarks/results/ranking_check.json; --build runs the feature pass of a model whose cache is missing
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import CACHE, RESULTS, read_json, write_json
from benchmarks.detect_matrix import cached_arrays
from benchmarks.zoo import FMNIST_SPECS, build, cifar_specs

logger = logging.getLogger(__name__)


def rankings(P: np.ndarray, y: np.ndarray) -> tuple[dict[str, np.ndarray], dict, np.ndarray]:
    """The four rankings the study compares (higher = more suspicious), the minority-mode test's per-class
    evidence and every sample's membership of its class's minority mode."""
    from scipy.stats import rankdata

    from flare_core.detectors.minority_mode import class_minority_modes
    from flare_core.detectors.scoring import class_atypicality, unflagged_ranking
    from flare_core.detectors.spectral import SpectralSignatures

    atyp = class_atypicality(P, y)
    ss = SpectralSignatures().fit(P, y).scores_
    member, evidence = class_minority_modes(P, y)
    nothing = np.zeros(len(y), dtype=bool)
    return ({"atypicality": atyp, "spectral": ss, "mean_rank": (rankdata(atyp) + rankdata(ss)) / 2.0,
             "minority_tier": unflagged_ranking(np.zeros(len(y)), nothing, atyp, y, member)}, evidence, member)


def trigger_tests(name: str, specs: dict, P: np.ndarray, y: np.ndarray, truth: np.ndarray, logits, evidence: dict,
                  all_classes: bool = False) -> dict:
    """class -> FLARE default's trigger test of its minority mode (``mode_trigger_evidence``, as the pipeline
    runs it: it finds the modes again, the same ones as ``evidence``); with ``all_classes``, a class without a mode gets the same test of its mixture's lighter
    component (the control population: groups the stage never tests), under ``lighter_component``."""
    from benchmarks.detect_matrix import _load
    from flare_core.detectors.minority_mode import minority_mode, top_direction_projection
    from flare_core.features.mode_trigger import mode_trigger_evidence, probe_images, trigger_test
    from flare_core.features.shortcuts import default_per_class

    held = [c for c, e in evidence.items() if e.get("holds")]
    if not held and not all_classes:
        return {}
    model, dataset = _load(build(specs[name]), "cpu")
    out: dict = {}
    ev = mode_trigger_evidence(model, dataset, P, logits=logits, random_state=0)
    for c in held:
        out[c] = {k: v for k, v in ev.classes[c].items()
                  if k in ("moved_in", "moved_in_control", "probe_n", "delta_rms", "why_not_tested")}
    if all_classes:
        probe, before = probe_images(model, dataset, default_per_class(dataset.num_classes), 0, logits=logits)
        rng = np.random.default_rng(1)
        for c, e in evidence.items():
            if c in held or "weight" not in e:
                continue
            in_c = np.flatnonzero(y == int(c))
            post, _ = minority_mode(top_direction_projection(P[in_c]))
            group = post > 0.5
            res = trigger_test(model, dataset, int(c), group, probe, before, rng)
            out[c] = {"lighter_component": {**res, "n": int(group.sum()), "poisoned": int(truth[in_c[group]].sum())}}
    return out


def model_row(name: str, specs: dict, cache: Path = CACHE, all_classes: bool = False) -> dict:
    from sklearn.metrics import roc_auc_score

    from flare_core.detectors.latent import fitted_better, sample_loss

    y, truth, P, logits = cached_arrays(name, specs, cache)
    y = np.asarray(y)
    P = np.asarray(P, dtype=np.float64)
    row: dict = {"model": name, "n": int(len(y)), "n_poisoned": int(truth.sum())}
    scores, evidence, member = rankings(P, y)
    if truth.any():
        for key, s in scores.items():
            row[f"auroc_{key}"] = round(float(roc_auc_score(truth, s)), 4)
    # the minority-mode test per class, beside how much poison the class holds (what the test should find);
    # in a class holding a mode: how many members are poisoned and, where the cache has the logits, how many
    # times better the model fits the members than the rest of the class (the stage's flagging bar)
    loss = sample_loss(np.asarray(logits), y) if logits is not None else None
    modes = {}
    for c, e in evidence.items():
        in_c = y == int(c)
        modes[c] = {**e, "n_poisoned": int(truth[in_c].sum())}
        if e.get("holds"):
            m = in_c & (member > 0.5)
            modes[c]["members_poisoned"] = int(truth[m].sum())
            if loss is not None:
                modes[c]["fitted_better"] = round(float(fitted_better(loss[m], loss[in_c & ~m])), 3)
    for c, rec in trigger_tests(name, specs, P, y, truth, logits, evidence, all_classes).items():
        modes[c].update(rec)
    row["minority_modes"] = modes
    return row


def ensure_cache(name: str, specs: dict, cache: Path = CACHE) -> None:
    """The feature pass ``benchmarks.detect_matrix`` caches (abnormality and penultimate features), if missing.
    It does not train: a zoo model that is not trained yet is an error naming the command that trains it
    (session 20's ``--build`` trained one silently, 15 minutes of CPU)."""
    if (Path(cache) / name / "pooled.npy").is_file():
        return
    from benchmarks.detect_matrix import _load, cached_features
    from benchmarks.zoo import entry_paths

    if not entry_paths(specs[name], cache=Path(cache)).model.is_file():
        raise SystemExit(f"zoo model {name} is not trained; train it first with "
                         f"`python3 -m benchmarks.zoo {name}{' --cifar ROOT' if name.startswith('cifar') else ''}`.")
    entry = build(specs[name])
    model, dataset = _load(entry, "cpu")
    cached_features(entry, model, dataset, Path(cache) / name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.ranking_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="zoo entries (default: every model with cached features)")
    p.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder root (adds the cifar-* entries)")
    p.add_argument("--build", action="store_true", help="run the feature pass of a listed model without a cache")
    p.add_argument("--merge", action="store_true", help="keep the other models already in the results")
    p.add_argument("--all-classes", action="store_true",
                   help="also run the trigger test on the lighter mixture component of every class without a mode")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    specs = dict(FMNIST_SPECS)
    if args.cifar:
        specs.update(cifar_specs(args.cifar))
    unknown = [n for n in args.models if n not in specs]
    if unknown:
        p.error(f"unknown zoo entries {', '.join(unknown)} (CIFAR-10 ones need --cifar ROOT)")
    names = args.models or [n for n in specs if (Path(CACHE) / n / "pooled.npy").is_file()]
    out = RESULTS / "ranking_check.json"
    rows = [r for r in read_json(out, {}).get("rows", []) if r["model"] not in names] if args.merge else []
    command = ("python3 -m benchmarks.ranking_check" + (" MODELS" if args.models else "")
               + (" --cifar ROOT" if args.cifar else "") + (" --build" if args.build else "")
               + (" --merge" if args.merge else "") + (" --all-classes" if args.all_classes else ""))
    for n in names:
        if args.build:
            ensure_cache(n, specs)
        rows.append(model_row(n, specs, all_classes=args.all_classes))
        logger.info("%s", rows[-1])
        rows.sort(key=lambda r: r["model"])
        write_json(out, {"command": command, "rows": rows})  # after every model: a long run keeps what it measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
