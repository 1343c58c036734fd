"""Purification outcome: does retraining on FLARE's purified set remove the backdoor?

For each attack at 10 % (Fashion-MNIST, small CNN): BA/ASR of the poisoned zoo model; FLARE default runs
through the product's own pipeline (``run_analysis`` = ``flare purify``) and writes ``OUT/purified``; a
fresh model with the same architecture, epochs and seed is trained on ``OUT/purified``; and one on the
ground-truth clean subset (every poisoned index removed: the ceiling). The clean zoo model (trained on the
untouched training set, zoo recipe) is shown too; "BA within 1 point of a clean model" is checked against
the ceiling, which is a clean model trained with exactly the same recipe as the purified one.

    python3 -m benchmarks.purification                    # every 10 % attack
    python3 -m benchmarks.purification fmnist-badnets-10  # one
    python3 -m benchmarks.purification fmnist-blended-a2a-10 --seeds 3   # retrained under 3 seeds
    python3 -m benchmarks.purification --cifar ROOT cifar-badnets-10     # CIFAR-10 (narrow ResNet, CPU)
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import CACHE, RESULTS, ZOO, read_json, write_csv, write_json
from benchmarks.zoo import FMNIST_SPECS, ZooEntry, build, cifar_specs, data_option, train_and_evaluate

logger = logging.getLogger(__name__)

ATTACKS_10 = ("fmnist-badnets-10", "fmnist-blended-10", "fmnist-trojan-10", "fmnist-wanet-10", "fmnist-wanet-10-e10", "fmnist-sig-5",
              "fmnist-badnets-a2a-10", "fmnist-blended-a2a-10")
COLUMNS = ["model", "attack", "mode", "rate", "n_train", "n_poisoned", "poisoned_ba", "poisoned_asr",
           "flare_flagged", "flare_tpr", "flare_fpr", "purified_n", "purified_poison_left", "purified_ba",
           "purified_asr", "ceiling_n", "ceiling_ba", "ceiling_asr", "retrain_epochs", "clean_model_ba", "ba_gap_to_ceiling_points",
           "ba_gap_to_clean_zoo_model_points",
           "meets_issue3", "purify_seconds", "command"]


def purify(entry: ZooEntry, out: Path, *, detector: str = "flare", seed: int = 0, views: bool = False):
    """``flare purify --model M --data D --ground-truth GT --out OUT`` through the library; returns the RunFolder."""
    from flare_core.pipeline import AnalysisConfig, run_analysis

    cfg = AnalysisConfig(model=str(entry.model), data=str(entry.train), detector=detector,
                         ground_truth=str(entry.ground_truth) if entry.ground_truth else None, seed=seed, views=views)
    return run_analysis(cfg, out, overwrite=True, export=True)


def clean_subset(entry: ZooEntry, out: Path) -> tuple:
    """The training set without the ground-truth poisoned (and WaNet cross) samples, as .npz; (path, n)."""
    from flare_core.attacks import GroundTruth
    from flare_core.data import load_dataset, save_npz

    if out.is_file():
        return out, int(np.load(out)["y"].shape[0]) if "y" in np.load(out).files else None
    ds = load_dataset(entry.train)
    gt = GroundTruth.from_json(entry.ground_truth)
    drop = np.zeros(len(ds), bool)
    drop[gt.poisoned_indices] = True
    drop[gt.cross_indices] = True
    keep = np.flatnonzero(~drop)
    save_npz(ds.subset(keep), out)
    return out, len(keep)


def run_one(entry: ZooEntry, clean_ba: Optional[float], *, zoo: Path = ZOO, cache: Path = CACHE,
            out_dir: Path = RESULTS / "purification", seed: int = 0, force: bool = False,
            epochs: Optional[int] = None) -> dict:
    """Purify one zoo model with FLARE default, retrain on OUT/purified and on the clean subset
    (``epochs``: default the zoo model's own), and score all three."""
    spec = entry.spec
    epochs = epochs or spec.epochs
    res_path = Path(out_dir) / f"{spec.name}.json"
    if not force and (prev := read_json(res_path, None)):
        return prev
    derived = Path(zoo) / spec.name / "derived"
    run_dir = Path(cache) / spec.name / "purify-run"
    t0 = time.perf_counter()
    run = purify(entry, run_dir, seed=seed)
    purify_s = time.perf_counter() - t0
    ev = (run.meta.get("evaluation") or {}).get("flare", {})
    purified = run_dir / "purified" / "data.npz"
    from flare_core.attacks import GroundTruth

    gt = GroundTruth.from_json(entry.ground_truth)
    flagged = run.meta["result"]["n_flagged"]
    import pandas as pd

    man = pd.read_csv(run_dir / "manifest.csv")
    kept_idx = man["index"].to_numpy()[man["flagged"].to_numpy() == 0]
    poison_left = int(np.isin(kept_idx, gt.poisoned_indices).sum())

    pm = train_and_evaluate(purified, entry.test_clean, entry.test_poisoned, derived / "purified" / "model.pt",
                            derived / "purified" / "metrics.json", arch=spec.arch, epochs=epochs, seed=spec.seed,
                            extra={"trained_on_desc": "FLARE OUT/purified"})
    subset, n_clean = clean_subset(entry, Path(cache) / spec.name / "clean_subset.npz")
    cm = train_and_evaluate(subset, entry.test_clean, entry.test_poisoned, derived / "ceiling" / "model.pt",
                            derived / "ceiling" / "metrics.json", arch=spec.arch, epochs=epochs, seed=spec.seed,
                            extra={"trained_on_desc": "ground-truth clean subset"})
    # "a clean model": the ceiling is one, trained with exactly the same recipe (epochs, seed) on clean data
    gap = 100 * (cm["benign_accuracy"] - pm["benign_accuracy"])
    gap_zoo = None if clean_ba is None else 100 * (clean_ba - pm["benign_accuracy"])
    row = {
        "model": spec.name, "attack": spec.attack, "mode": spec.mode, "rate": spec.rate,
        "n_train": run.n_samples, "n_poisoned": gt.n_poisoned,
        "poisoned_ba": entry.metrics.get("benign_accuracy"), "poisoned_asr": entry.metrics.get("attack_success_rate"),
        "flare_flagged": flagged, "flare_tpr": ev.get("tpr"), "flare_fpr": ev.get("fpr"),
        "purified_n": int(len(kept_idx)), "purified_poison_left": poison_left,
        "purified_ba": pm["benign_accuracy"], "purified_asr": pm["attack_success_rate"],
        "ceiling_n": n_clean, "ceiling_ba": cm["benign_accuracy"], "ceiling_asr": cm["attack_success_rate"],
        "retrain_epochs": epochs, "clean_model_ba": clean_ba,
        "ba_gap_to_ceiling_points": round(gap, 2),
        "ba_gap_to_clean_zoo_model_points": None if gap_zoo is None else round(gap_zoo, 2),
        "meets_issue3": bool(pm["attack_success_rate"] < 0.02 and gap <= 1.0),
        "purify_seconds": round(purify_s, 1),
        "dataset": "cifar10" if spec.name.startswith("cifar-") else "fashion-mnist", "arch": spec.arch,
        "command": f"python3 -m benchmarks.purification{data_option(spec)} {spec.name} --force"
                   + (f" --epochs {epochs}" if epochs != spec.epochs else ""),
    }
    write_json(res_path, row)
    shutil.rmtree(run_dir / "purified", ignore_errors=True)  # regenerable; keep the cache small
    return row


def purified_subset(entry: ZooEntry, run_dir: Path, out_dir: Path, expected_n: int) -> Path:
    """The purified set of the FLARE run cached in ``run_dir``, written again into ``out_dir`` from the
    run's manifest by the export ``flare purify`` uses (its unflagged rows, in index order: the same samples
    as ``OUT/purified``, which ``run_one`` removes to keep the cache small). Refuses a manifest whose kept
    count is not the row's. Returns the .npz path."""
    import pandas as pd

    from flare_core.data import load_dataset
    from flare_core.data.writers import export_subset

    if not (Path(run_dir) / "manifest.csv").is_file():
        raise RuntimeError(f"No cached FLARE run in {run_dir} to rebuild the purified set from; run this model "
                           "with --force (FLARE again, then every seed).")
    man = pd.read_csv(Path(run_dir) / "manifest.csv")
    keep = man["index"].to_numpy()[man["flagged"].to_numpy() == 0]
    if len(keep) != expected_n:
        raise RuntimeError(f"The cached FLARE run in {run_dir} keeps {len(keep)} samples but the purification row "
                           f"says {expected_n}; re-run with --force.")
    shutil.rmtree(out_dir, ignore_errors=True)  # the benchmark's own cache (an export made before the marker)
    return Path(export_subset(load_dataset(entry.train), keep, out_dir))


def _seed_dir(zoo: Path, spec, kind: str, seed: int) -> Path:
    base = Path(zoo) / spec.name / "derived"
    return base / kind if seed == spec.seed else base / f"{kind}-seed{seed}"


def _retrain(entry: ZooEntry, row: dict, kind: str, data: Path, n: int, seed: int, epochs: int, *,
             zoo: Path, force: bool) -> dict:
    """BA/ASR of the ``kind`` ('purified' or 'ceiling') model trained with ``seed``: the row's own for the
    zoo seed, a reused ``derived/<kind>-seed<k>/metrics.json`` that matches, or a new training."""
    spec = entry.spec
    if seed == spec.seed:
        return {"benign_accuracy": row[f"{kind}_ba"], "attack_success_rate": row[f"{kind}_asr"]}
    d = _seed_dir(zoo, spec, kind, seed)
    m = None if force else read_json(d / "metrics.json", None)
    if m and m.get("seed") == seed and m.get("epochs") == epochs and m.get("n_train") == n:
        return m
    return train_and_evaluate(data, entry.test_clean, entry.test_poisoned, d / "model.pt", d / "metrics.json",
                              arch=spec.arch, epochs=epochs, seed=seed,
                              extra={"trained_on_desc": f"{kind} set, seed spread"})


def seed_spread(entry: ZooEntry, row: dict, seeds: Sequence[int], *, zoo: Path = ZOO, cache: Path = CACHE,
                out_dir: Path = RESULTS / "purification", force: bool = False) -> dict:
    """Retrain the purified and the ceiling model under every seed in ``seeds`` (the same training sets;
    only the initialisation and batch order change) and add each seed's BA/ASR, their means and spreads,
    and the issue-3 check on the means to ``row`` (written back to the row's JSON).

    One retraining's ASR moves by a point or more with its seed at 2 epochs, so a single-run ASR near the
    2 % line cannot settle "retraining brings ASR under 2 %"; the mean over seeds, with its spread, can."""
    spec = entry.spec
    epochs = int(row["retrain_epochs"])
    scratch = Path(cache) / spec.name / "purified-rebuilt"
    subset, _ = clean_subset(entry, Path(cache) / spec.name / "clean_subset.npz")
    by = {"purified_ba": [], "purified_asr": [], "ceiling_ba": [], "ceiling_asr": []}
    try:
        purified = purified_subset(entry, Path(cache) / spec.name / "purify-run", scratch, row["purified_n"])
        for seed in seeds:
            for kind, data, n in (("purified", purified, row["purified_n"]), ("ceiling", subset, row["ceiling_n"])):
                m = _retrain(entry, row, kind, data, n, seed, epochs, zoo=zoo, force=force)
                by[f"{kind}_ba"].append(m["benign_accuracy"])
                by[f"{kind}_asr"].append(m["attack_success_rate"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = dict(row, seeds=list(seeds))
    for k, v in by.items():
        out[f"{k}_by_seed"] = v
        out[f"{k}_mean"] = round(float(np.mean(v)), 5)
        out[f"{k}_sd"] = round(float(np.std(v, ddof=1)), 5) if len(v) > 1 else 0.0
    gap = 100 * (out["ceiling_ba_mean"] - out["purified_ba_mean"])
    out["ba_gap_to_ceiling_points_mean"] = round(gap, 2)
    out["meets_issue3_mean"] = bool(out["purified_asr_mean"] < 0.02 and gap <= 1.0)
    out["command_seeds"] = f"python3 -m benchmarks.purification{data_option(spec)} {spec.name} --seeds {len(seeds)}"
    write_json(Path(out_dir) / f"{spec.name}.json", out)
    return out


def collect(out_dir: Path = RESULTS / "purification") -> list:
    return [read_json(p) for p in sorted(Path(out_dir).glob("*.json"))]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.purification", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*")
    p.add_argument("--force", action="store_true")
    p.add_argument("--epochs", type=int, default=None, help="retraining epochs (default: the zoo model's)")
    p.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder root (enables the cifar-* entries)")
    p.add_argument("--seeds", type=int, default=1,
                   help="retrain the purified and ceiling models under this many seeds (the zoo seed and the "
                        "next ones) and report means and spreads; models already trained are reused")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    specs = dict(FMNIST_SPECS)
    if args.cifar:
        specs.update(cifar_specs(args.cifar))
    for n in args.models or ATTACKS_10:
        if n not in specs:
            p.error(f"unknown zoo entry {n!r}" + (" (CIFAR-10 entries need --cifar ROOT)" if n.startswith("cifar-") else ""))
        clean = build(specs["cifar-clean" if n.startswith("cifar-") else "fmnist-clean"])
        entry = build(specs[n])
        row = run_one(entry, clean.metrics.get("benign_accuracy"), force=args.force, epochs=args.epochs)
        if args.seeds > 1:
            s0 = specs[n].seed
            row = seed_spread(entry, row, range(s0, s0 + args.seeds), force=args.force)
        print({k: row[k] for k in ("model", "poisoned_asr", "purified_ba", "purified_asr", "ceiling_ba", "meets_issue3")})
    rows = collect()
    write_csv(RESULTS / "purification.csv", rows, COLUMNS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
