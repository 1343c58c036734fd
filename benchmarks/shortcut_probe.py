"""Calibration of FLARE default's shortcut stage: the probe and the counter test on every zoo model.

Per model (``flare_core.features.shortcuts``): the strongest ``moved_in`` share of each transform (how
many other images it sends into one class), whether that passes the probe's bar, and, where it does,
what the stage would flag (``flare_core.detectors.shortcut_stage.shortcut_flags``) against the lab's
truth, with the drop quantiles of the poisoned and genuine members of the class.

    python3 -m benchmarks.shortcut_probe fmnist-clean fmnist-wanet-0.5-e40
    python3 -m benchmarks.shortcut_probe --all [--cifar ROOT]

Results: ``benchmarks/results/shortcut_probe.json`` (one record per model, merged across runs).
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import RESULTS, machine, read_json, write_json
from benchmarks.detect_matrix import _load, _truth
from benchmarks.zoo import FMNIST_SPECS, build, cifar_specs

logger = logging.getLogger(__name__)
OUT = RESULTS / "shortcut_probe.json"


def probe_model(spec) -> dict:
    from flare_core.detectors.shortcut_stage import shortcut_flags
    from flare_core.features.shortcuts import shortcut_evidence

    entry = build(spec)
    model, dataset = _load(entry, "cpu")
    y = np.asarray(dataset.labels)
    truth = _truth(entry, len(y))
    t0 = time.perf_counter()
    ev = shortcut_evidence(model, dataset)
    rec = {"model": spec.name, "attack": spec.attack, "rate": spec.rate if spec.poisoned else 0.0,
           "mode": spec.mode, "epochs": spec.epochs, "asr": (read_json(entry.dir / "metrics.json", {}) or {}).get("attack_success_rate"), **ev.summary(),
           "seconds_total": round(time.perf_counter() - t0, 2), "machine": "cuda" if machine()["cuda"] else "cpu"}
    if ev.found:
        flags = shortcut_flags(ev.drop, ev.after_class, y, ev.target)
        members = y == ev.target
        rec["members"] = int(members.sum())
        rec["members_poisoned"] = int((members & truth).sum())
        rec["flagged"] = int(flags.sum())
        rec["flagged_poisoned"] = int((flags & truth).sum())
        rec["tpr"] = round(float(flags[truth].mean()), 4) if truth.any() else None
        rec["fpr"] = round(float(flags[~truth].mean()), 6)
        d = ev.drop[members]
        q = [0.5, 0.9, 0.99, 0.999]
        rec["drop_genuine_q"] = dict(zip(map(str, q), np.round(np.quantile(d[~truth[members]], q), 3).tolist()))
        if (members & truth).any():
            rec["drop_poisoned_q"] = dict(zip(map(str, q), np.round(np.quantile(ev.drop[members & truth], q), 3).tolist()))
    logger.info("%s: %s", spec.name, {k: rec[k] for k in ("strongest", "found", "target") if k in rec})
    return rec


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*")
    ap.add_argument("--all", action="store_true", help="every zoo model with a checkpoint")
    ap.add_argument("--cifar", help="CIFAR-10 ImageFolder root (train/, test/) for the cifar-* models")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    specs = dict(FMNIST_SPECS)
    if a.cifar:
        specs.update(cifar_specs(a.cifar))
    from benchmarks.common import ZOO

    names = list(a.models) or ([n for n in specs if (ZOO / n / "model.pt").is_file()] if a.all else [])
    unknown = [n for n in names if n not in specs]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {sorted(specs)} (cifar-* need --cifar)")
    records = read_json(OUT, {}) or {}
    for n in names:
        records[n] = probe_model(specs[n])
        write_json(OUT, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
