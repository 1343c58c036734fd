"""Synthetic run folders (tiny, written with the real ``write_run``) shared by the dashboard/report tests.

Import with ``from test_app_support import make_run`` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flare_core.errors import FlareError
from flare_core.run_folder import RunFolder, write_run

CLASSES = ["zero", "one", "two"]


@dataclass
class View:
    indices: np.ndarray
    embedding: np.ndarray
    clusters: np.ndarray
    cluster_stability: dict


def make_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)


def make_run(
    path: Path,
    *,
    per_class: int = 20,
    classes=CLASSES,
    truth: bool = True,
    baselines=("ac",),
    data_path: str = "synthetic.npz",
    model_path: str = "model.pt",
    seed: int = 0,
    losses: bool = False,
    flag: bool = True,
    label_noise=None,
) -> RunFolder:
    """A run over ``per_class * len(classes)`` samples; in every class the last 3 samples form a flagged cluster.
    ``losses``: the manifest also has the model's per-sample ``loss`` and ``next_class`` (runs that read logits);
    ``flag=False``: nothing flagged (a run that found nothing); ``label_noise``: indices the manifest's
    ``label_noise`` column marks (samples FLARE left unflagged as likely mislabelled)."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    labels = np.repeat(np.arange(k), per_class)
    n = len(labels)
    flagged = np.zeros(n, bool)
    clusters = np.zeros(n, int)
    views = {}
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        flagged[idx[-3:]] = flag
        clusters[idx[-3:]] = 1
        emb = rng.normal(size=(len(idx), 2)).astype(np.float32)
        emb[-3:] += 6.0
        cl = np.zeros(len(idx), int)
        cl[-3:] = 1
        cl[0] = -1
        views[c] = View(idx, emb, cl, {0: 0.9, 1: 0.7})
    poisoned = flagged.copy()
    poisoned[0] = True  # one miss, so metrics are not trivially perfect
    poisoned[-1] = False  # one false alarm
    manifest = pd.DataFrame({
        "index": np.arange(n),
        "source": [f"{data_path}#{i}" for i in range(n)],
        "label": labels,
        "class_name": [classes[i] for i in labels],
        "flagged": flagged.astype(int),
        "score": np.round(rng.random(n) + 2 * flagged, 4),
        "cluster": clusters,
    })
    if losses:
        manifest["loss"] = np.round(rng.exponential(0.1, size=n), 6)
        manifest["next_class"] = (labels + 1) % k
    if label_noise is not None:
        manifest["label_noise"] = np.isin(np.arange(n), label_noise).astype(int)
    for b in baselines:
        fb = flagged.copy()
        fb[1] = True
        manifest[f"flagged_{b}"] = fb.astype(int)
        manifest[f"score_{b}"] = rng.random(n).round(4)
    if truth:
        manifest["poisoned"] = poisoned.astype(int)
    meta = {
        "format": "flare-run/1",
        "created": "2026-01-01T00:00:00+0000",
        "config": {"model": model_path, "data": data_path, "arch": None, "data_format": None, "split": "train",
                   "detector": "flare", "baselines": list(baselines), "seed": 0, "params": {},
                   "ground_truth": "gt.json" if truth else None},
        "model": {"kind": "state_dict", "arch": "small-cnn", "num_classes": k, "path": model_path},
        "dataset": {"path": data_path, "format": "npz", "split": "train", "n_samples": n, "image_shape": [8, 8, 1],
                    "classes": list(classes), "counts": [per_class] * k, "skipped": [["bad.png", "truncated"]],
                    "n_skipped": 1},
        "detector": {"name": "flare", "params": {}, "report": {"params": {"mode": "default"}, "report": {}}},
        "baselines": {b: {"params": {}, "report": None} for b in baselines},
        "result": {"n_flagged": int(flagged.sum()), "flagged_per_class": np.bincount(labels[flagged], minlength=k).tolist(),
                   "subspace": 4, "poison_found": bool(flagged.any())},
        "ground_truth": {"attack": "badnets", "n_poisoned": int(poisoned.sum())} if truth else None,
        "versions": {"python": "3.11", "torch": "x"},
        "timings": {"total": 1.0},
    }
    emb = rng.normal(size=(n, 2)).astype(np.float32)
    return write_run(path, meta=meta, manifest=manifest, features=rng.normal(size=(n, 4)), embedding=emb, views=views)


def make_dataset(run: RunFolder):
    """The ImageDataset matching a synthetic run (same sizes, labels and sources)."""
    from flare_core.dataset import ImageDataset

    df = run.manifest
    return ImageDataset(images=make_images(len(df)), labels=df["label"].to_numpy(), classes=run.classes,
                        sources=df["source"].tolist(), format="npz", root=run.meta["dataset"]["path"])


def test_make_run_is_a_valid_run_folder(tmp_path):
    run = make_run(tmp_path / "run")
    assert run.n_samples == 60 and run.detectors() == ["flare", "ac"]
    assert run.flagged().sum() == 9 and run.ground_truth().sum() == 9
    v = run.class_view(1)
    assert len(v.indices) == 20 and v.embedding.shape == (20, 2)
    assert len(make_dataset(run)) == 60



def test_a_views_embedded_rows_round_trip_and_the_title_says_how_many(tmp_path):
    from flare_core.detectors.views import ClassView

    base = make_run(tmp_path / "base")
    idx = np.flatnonzero(base.manifest["label"].to_numpy() == 1)
    embedded = np.zeros(len(idx), bool)
    embedded[::2] = True
    view = ClassView(idx, np.zeros((len(idx), 2)), np.zeros(len(idx), int), {0: 1.0}, {0: len(idx)},
                     np.zeros(len(idx), bool), "umap", embedded)
    run = write_run(tmp_path / "run", meta=dict(base.meta), manifest=base.manifest, features=np.array(base.features()),
                    embedding=base.embedding(), views={1: view})
    v = run.class_view(1)
    assert np.array_equal(v.embedded, embedded)
    assert v.sampling_note() == "UMAP on 10 of 20 samples, the rest placed by their nearest neighbours"
    old = base.class_view(1)  # a run written before views were sampled: every row embedded
    assert old.embedded is None and old.sampling_note() == ""


# ---- a damaged run folder: one sentence that says which file, never a raw error ---------------------------------------
@pytest.mark.parametrize("damage, file", [
    (lambda d: (d / "run.json").write_text("[]"), "run.json"),
    (lambda d: (d / "run.json").write_bytes(b"\xff\xfe"), "run.json"),
    (lambda d: (d / "manifest.csv").write_text((d / "manifest.csv").read_text()[:400]), "manifest.csv"),
    (lambda d: (d / "embedding.npy").write_bytes(b"junk"), "embedding.npy"),
    (lambda d: (d / "features.npy").unlink(), "features.npy"),
    (lambda d: (d / "views" / "class_1.npz").write_bytes(b"junk"), "class_1.npz"),
])
def test_a_damaged_run_folder_names_the_damaged_file(tmp_path, damage, file):
    run = make_run(tmp_path / "run")
    damage(run.path)
    with pytest.raises(FlareError, match=rf"{re.escape(file)}.*damaged"):
        r = RunFolder(run.path)
        r.n_samples, r.embedding(), r.features(), r.class_view(1)


def test_damaged_decisions_are_reported_and_never_overwritten(tmp_path):
    run = make_run(tmp_path / "run")
    (run.path / "decisions.json").write_text('{"decisions": {"3": "remove", ')  # cut off mid-write by hand
    with pytest.raises(FlareError, match="decisions.json cannot be read"):
        run.decisions()
    with pytest.raises(FlareError, match="left as it is"):
        run.set_decisions([4], "keep")
    assert (run.path / "decisions.json").read_text() == '{"decisions": {"3": "remove", '
