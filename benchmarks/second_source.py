"""A clean dataset pooled from two sources: does FLARE default call the second source poison?

Each row is a *clean* Fashion-MNIST training set (no trigger, every label right) in which a share of the
images, drawn at random from every class, comes from a "second source":

* ``invert``: the image inverted (255 - x): a white background, a dark garment;
* ``dim``: a second scanner: contrast x0.6, a grey floor of 60, sensor noise (sd 8).

A small CNN is trained on it by ``flare train`` (4 epochs, seed 0, as the clean control), and ``flare purify``
runs on it twice: FLARE default, and FLARE default without its dataset-wide rule
(``--param latent_wide_share=0``, the behaviour before session 27).  Every flag is a false alarm; the
columns say how many of them are second-source images and in how many classes.

    python3 -m benchmarks.second_source                 # every row (trains the models that are missing)
    python3 -m benchmarks.second_source invert-0.3      # one row
    python3 -m benchmarks.second_source --poisoned      # the same next-class distance on the poisoned models

The rule's bar (median next-class distance <= 0.2) is set between the two: ``--poisoned`` measures, on every
cached benchmark model with poison (``benchmarks/cache/<model>/``: labels, logits, ground truth), the distance
between the poisoned and the genuine samples of each class holding at least 20 poisoned ones.

Models: ``benchmarks/zoo/second-source-<kind>-<share>/model.pt`` (with ``build.json``); data:
``benchmarks/cache/second-source-<kind>-<share>/train.npz`` and ``second.npy`` (which images are second-source;
regenerated from the seed); results: ``benchmarks/results/second_source.json``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (CACHE, RESULTS, ZOO, chosen_rows, machine, read_json, results_with_rows,
                               run_flare, show_cmd, write_json)

ROWS = ("invert-0.15", "invert-0.3", "invert-0.5", "dim-0.3")
EPOCHS = 4
SEED = 0
OUT = RESULTS / "second_source.json"


def second_source(x: np.ndarray, share: float, kind: str, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(images with ``share`` of them, drawn at random, from the second source; which ones).  ``x`` unchanged."""
    rng = np.random.default_rng(seed)
    pick = rng.random(len(x)) < share
    out = x.copy()
    if kind == "invert":
        out[pick] = 255 - out[pick]
    elif kind == "dim":
        v = out[pick].astype(np.float32) * 0.6 + 60 + rng.normal(0, 8, out[pick].shape)
        out[pick] = np.clip(v, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown second source {kind!r}; use 'invert' or 'dim'")
    return out, pick


def build_data(row: str) -> Path:
    """``benchmarks/cache/second-source-<row>/train.npz`` (and ``second.npy``), made once."""
    kind, share = row.split("-")
    folder = CACHE / f"second-source-{row}"
    data = folder / "train.npz"
    if data.exists() and (folder / "second.npy").exists():
        return data
    from flare_core.data import load_dataset

    ds = load_dataset("builtin:fashion-mnist")
    x, pick = second_source(np.asarray(ds.images), float(share), kind)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "train.tmp.npz"
    np.savez(tmp, x=x, y=np.asarray(ds.labels), classes=np.asarray(ds.classes))
    tmp.replace(data)
    np.save(folder / "second.npy", pick)
    return data


def train_small_cnn(model_dir: Path, data: Path, command: str, retrain: bool = False,
                    extra: tuple = (), arch: str = "small-cnn") -> Path:
    """``MODEL_DIR/model.pt``: the clean control's recipe (``flare train``, small CNN, 4 epochs, seed 0), made once;
    ``build.json`` records ``command`` (the benchmark command that made it) and the CLI equivalent.  ``extra``:
    more ``flare train`` arguments (test sets); ``arch``: ``narrow-resnet`` for CIFAR-10 (the CIFAR clean control's
    recipe, also 4 epochs)."""
    model = model_dir / "model.pt"
    if model.exists() and not retrain:
        return model
    model_dir.mkdir(parents=True, exist_ok=True)
    args = ["train", "--data", data, "--arch", arch, "--epochs", EPOCHS, "--seed", SEED, "--out", model,
            "--metrics-out", model_dir / "metrics.json", *extra]
    seconds = run_flare(args)
    record = {"command": command, "cli_equivalent": show_cmd(args), "train_seconds_wall": round(seconds, 1),
              "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    write_json(model_dir / "build.json", record)
    from benchmarks.zoo import update_manifest

    update_manifest(model_dir.parent, model_dir.name, record)  # the zoo's manifest lists every model in it
    return model


def build_model(row: str, data: Path, retrain: bool = False) -> Path:
    return train_small_cnn(ZOO / f"second-source-{row}", data, "python3 -m benchmarks.second_source " + row, retrain)


def purify_against(marked: np.ndarray, model: Path, data: Path, params: list[str],
                   keep: Path | None = None, arch: str = "small-cnn") -> dict:
    """One ``flare purify`` run: what it flagged, against a mask of the images that carry the quirk
    (``flagged_marked``).  ``keep``: a folder to copy the run's ``manifest.csv`` and ``run.json`` into."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = ["purify", "--model", model, "--arch", arch, "--data", data, "--out", out]
        for p in params:
            args += ["--param", p]
        seconds = run_flare(args)
        import pandas as pd

        manifest = pd.read_csv(out / "manifest.csv")
        meta = json.loads((out / "run.json").read_text())
        if keep is not None:
            import shutil

            keep.mkdir(parents=True, exist_ok=True)
            for name in ("manifest.csv", "run.json"):
                shutil.copyfile(out / name, keep / name)
    flagged = manifest["flagged"].to_numpy().astype(bool)
    y = manifest["label"].to_numpy()
    rep = meta["detector"]["report"]["report"]
    per_class = {str(c): int(flagged[y == c].sum()) for c in np.unique(y) if flagged[y == c].any()}
    shown = [("OUT" if a == out else a) for a in args]  # the run folder was a temporary one
    return {"params": params, "command": show_cmd(shown),
            "n_flagged": int(flagged.sum()), "flagged_marked": int((flagged & marked).sum()),
            "flagged_per_class": per_class, "representation": rep.get("representation"),
            "dataset_wide_split": (rep.get("latent") or {}).get("dataset_wide_split"), "seconds": round(seconds, 1)}


def purify(row: str, model: Path, data: Path, params: list[str]) -> dict:
    """One ``flare purify`` run: what it flagged, against the second-source mask."""
    rec = purify_against(np.load(CACHE / f"second-source-{row}" / "second.npy"), model, data, params)
    rec["flagged_second_source"] = rec.pop("flagged_marked")
    return rec


def poisoned_next_class_tv(min_poisoned: int = 20) -> dict:
    """Per cached poisoned model: the next-class total variation between the poisoned and the genuine samples
    of each class with at least ``min_poisoned`` poisoned ones (ground truth, not flags)."""
    from flare_core.detectors.latent import histogram_distance, next_class

    out = {}
    for gt_path in sorted(CACHE.glob("*/ground_truth.json")):
        folder = gt_path.parent
        if not (folder / "logits.npy").exists() or not (folder / "train.npz").exists():
            continue
        y = np.load(folder / "train.npz")["y"]
        logits = np.load(folder / "logits.npy")
        idx = json.loads(gt_path.read_text()).get("poisoned_indices") or []
        truth = np.zeros(len(y), bool)
        truth[np.asarray(idx, dtype=np.int64)] = True
        nxt, k = next_class(logits, y), logits.shape[1]
        tvs = {str(c): round(histogram_distance(nxt[(y == c) & truth], nxt[(y == c) & ~truth], k), 3)
               for c in range(k) if ((y == c) & truth).sum() >= min_poisoned}
        if tvs:
            out[folder.name] = {"classes": tvs, "median": round(float(np.median(list(tvs.values()))), 3)}
    return out


def run_row(row: str, retrain: bool = False) -> dict:
    data = build_data(row)
    model = build_model(row, data, retrain)
    pick = np.load(CACHE / f"second-source-{row}" / "second.npy")
    metrics = read_json(model.parent / "metrics.json", {}) or {}
    history = metrics.get("history") or {}
    return {"row": row, "n": int(len(pick)), "second_source": int(pick.sum()),
            "train_accuracy": (history.get("train_accuracy") or [None])[-1],
            "default": purify(row, model, data, []),
            "without_wide_rule": purify(row, model, data, ["latent_wide_share=0"]),
            "machine": machine()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="*", help=f"rows to run (default: all of {', '.join(ROWS)})")
    ap.add_argument("--retrain", action="store_true", help="train the models again")
    ap.add_argument("--poisoned", action="store_true",
                    help="measure the next-class distance of the poisoned parts of the cached benchmark models")
    args = ap.parse_args(argv)
    if args.poisoned:
        results = read_json(OUT, {}) or {}
        results["poisoned"] = {"command": "python3 -m benchmarks.second_source --poisoned",
                               "models": poisoned_next_class_tv()}
        write_json(OUT, results)
        med = [m["median"] for m in results["poisoned"]["models"].values() if len(m["classes"]) >= 2]
        print(f"{len(results['poisoned']['models'])} poisoned models; poison in two or more classes: medians "
              f"{min(med):.2f}-{max(med):.2f}" if med else "no model with poison in two or more classes")
        return
    rows = chosen_rows(args.rows, ROWS)
    results = results_with_rows(OUT, "python3 -m benchmarks.second_source [ROW ...]")
    for row in rows:
        rec = run_row(row, args.retrain)
        results["rows"][row] = rec
        write_json(OUT, results)
        d, w = rec["default"], rec["without_wide_rule"]
        print(f"{row}: default {d['n_flagged']} flagged ({d['flagged_second_source']} second-source); "
              f"without the rule {w['n_flagged']} ({w['flagged_second_source']})", flush=True)


if __name__ == "__main__":
    main()
