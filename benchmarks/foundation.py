"""Issue 2 "Done when": `flare attack` (10 %, all-to-one) then `flare train` on the 2-core CPU, Fashion-MNIST.

Targets: BadNets BA >= 88 % and ASR >= 95 %; Blended and WaNet BA >= 88 % and ASR >= 90 %; attack +
training under 10 minutes in total. These three models are the zoo's ``fmnist-{badnets,blended,wanet}-10``.

    python3 -m benchmarks.foundation            # reuse the zoo models
    python3 -m benchmarks.foundation --retrain  # time them again from scratch
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

from benchmarks.common import RESULTS, ZOO, machine, read_json, write_json
from benchmarks.zoo import FMNIST_SPECS, build

TARGETS = {"fmnist-badnets-10": 0.95, "fmnist-blended-10": 0.90, "fmnist-wanet-10": 0.90}
BA_TARGET = 0.88
TIME_LIMIT_S = 600


def evaluate_entry(name: str, retrain: bool = False) -> dict:
    """The entry's numbers against the issue's targets."""
    spec = FMNIST_SPECS[name]
    e = build(spec, retrain=retrain)
    man = (read_json(ZOO / "MANIFEST.json", {}) or {}).get("models", {}).get(name, {})
    attack_s = man.get("attack_seconds")
    if not attack_s:  # the data existed already when the model was trained: time the attack step now
        import tempfile
        import time
        from pathlib import Path

        from benchmarks.zoo import _attack

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            _attack(spec, Path(tmp) / "data")
            attack_s = round(time.perf_counter() - t0, 1)
    train_s = e.metrics.get("train_seconds") or man.get("train_seconds_wall")
    total = (attack_s or 0.0) + (train_s or 0.0)
    ba, asr = e.metrics.get("benign_accuracy"), e.metrics.get("attack_success_rate")
    return {
        "model": name, "attack": spec.attack, "rate": spec.rate, "epochs": spec.epochs, "arch": spec.arch,
        "benign_accuracy": ba, "attack_success_rate": asr, "attack_seconds": attack_s, "train_seconds": train_s,
        "train_cpu_seconds": e.metrics.get("train_cpu_seconds"),
        "load_average_1min": e.metrics.get("load_average_1min"),
        "total_seconds": round(total, 1), "ba_target": BA_TARGET, "asr_target": TARGETS[name],
        "meets_ba": ba is not None and ba >= BA_TARGET, "meets_asr": asr is not None and asr >= TARGETS[name],
        "meets_time": total < TIME_LIMIT_S,
        "command": f"python3 -m benchmarks.zoo {name} --retrain",
        "cli_equivalent": man.get("cli_equivalent"),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.foundation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retrain", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows = [evaluate_entry(n, args.retrain) for n in TARGETS]
    write_json(RESULTS / "foundation.json", {"rows": rows, "machine": machine(), "load_average": os.getloadavg()})
    for r in rows:
        print(r["model"], r["benign_accuracy"], r["attack_success_rate"], r["total_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
