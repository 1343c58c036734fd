"""Calibration of FLARE default's shortcut stage: the probe and the counter test on every zoo model.

Per model (``flare_core.features.shortcuts``): the strongest ``moved_in`` share of each transform (how
many other images it sends into one class), whether that passes the probe's bar, and, where it does,
what the stage would flag (``flare_core.detectors.shortcut_stage.shortcut_flags``) against the lab's
truth, with the drop quantiles of the poisoned and genuine members of the class.

    python3 -m benchmarks.shortcut_probe fmnist-clean fmnist-wanet-0.5-e40
    python3 -m benchmarks.shortcut_probe --all [--cifar ROOT]
    python3 -m benchmarks.shortcut_probe --timing fmnist-clean fmnist-wanet-0.5-e40   # + its cost

Results: ``benchmarks/results/shortcut_probe.json`` (one record per model, merged across runs).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import RESULTS, machine, read_json, write_json
from benchmarks.detect_matrix import _load, _truth
from benchmarks.zoo import FMNIST_SPECS, build, cifar_specs

logger = logging.getLogger(__name__)
OUT = RESULTS / "shortcut_probe.json"


def probe_model(spec, timing: bool = False) -> dict:
    from flare_core.detectors.shortcut_stage import shortcut_flags
    from flare_core.features.shortcuts import shortcut_evidence

    entry = build(spec)
    model, dataset = _load(entry, "cpu")
    y = np.asarray(dataset.labels)
    truth = _truth(entry, len(y))
    t0 = time.perf_counter()
    ev = shortcut_evidence(model, dataset)
    stage_s = time.perf_counter() - t0
    plain_s = None
    if timing:  # the physical floor to compare with: one plain forward pass over the whole dataset
        from flare_core.models.training import predict_logits

        from flare_core.features.shortcuts import counter_test

        t1 = time.perf_counter()
        logits = predict_logits(model, dataset.images)
        plain_s = time.perf_counter() - t1
        # what the pipeline pays: it hands the feature pass's logits to the counter test
        t2 = time.perf_counter()
        counter_test(model, dataset, ev, logits=logits)
        reuse_s = ev.seconds.get("probe", 0.0) + (time.perf_counter() - t2 if ev.found else 0.0)
    rec = {"model": spec.name, "attack": spec.attack, "rate": spec.rate if spec.poisoned else 0.0,
           "mode": spec.mode, "epochs": spec.epochs, "asr": (read_json(entry.dir / "metrics.json", {}) or {}).get("attack_success_rate"), **ev.summary(),
           "seconds_total": round(stage_s, 2), "machine": "cuda" if machine()["cuda"] else "cpu"}
    if plain_s is not None:
        import torch

        rec["timing"] = {"stage_seconds": round(stage_s, 2), "plain_pass_seconds": round(plain_s, 2),
                         "stage_over_plain_pass": round(stage_s / plain_s, 3),
                         "stage_seconds_reusing_logits": round(reuse_s, 2),
                         "reusing_logits_over_plain_pass": round(reuse_s / plain_s, 3), "n": len(y),
                         "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2)}
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
    ap.add_argument("--timing", action="store_true",
                    help="also time one plain forward pass over the data (the stage's cost is reported against it)")
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
        records[n] = probe_model(specs[n], timing=a.timing)
        write_json(OUT, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
