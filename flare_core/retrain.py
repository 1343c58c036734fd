"""Retraining on the purified set: benign accuracy (BA) and attack success rate (ASR) before and after.

"Before" is the analysed model itself; "after" is a fresh model of the same architecture, trained with the
project's own trainer (:func:`flare_core.models.train_model`, what ``flare train`` runs) on the samples the
run keeps: the detector's flags overridden by the analyst's decisions (``RunFolder.removal_mask``). When the
model file records how it was trained (``flare train`` and the demo write the trainer's config into the
checkpoint's description), the same recipe is used; otherwise the architecture's defaults.

BA is measured on a clean test set, ASR on a triggered test set (as the backdoor lab writes them:
``test_clean.npz`` / ``test_poisoned.npz`` next to the ground truth; :func:`find_test_sets` finds them).

The result goes into the run folder, each file written atomically: ``retrain.json`` (the numbers) and
``retrained_model.pt`` (+ its ``.json`` description), so a reload shows it without retraining. The source
dataset is never modified. No streamlit here: the dashboard calls :func:`retrain_purified`.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np

from flare_core.atomic import write_json
from flare_core.data import lab
from flare_core.dataset import ImageDataset
from flare_core.errors import FlareError
from flare_core.progress import ProgressCallback, ensure_progress
from flare_core.run_folder import RunFolder

logger = logging.getLogger(__name__)

RESULT_FILE = "retrain.json"
MODEL_FILE = "retrained_model.pt"
FORMAT = "flare-retrain/1"
TEST_FILES = (lab.TEST_CLEAN, lab.TEST_POISONED)  # what `flare attack` writes beside its training set
# Trainer settings taken over from a recorded recipe (the rest is decided here: data, device, progress).
RECIPE_KEYS = ("epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay", "momentum", "seed")


def removal_digest(mask: np.ndarray) -> str:
    """A short fingerprint of a removal mask (to tell whether a stored result still matches the decisions)."""
    return hashlib.sha256(np.packbits(np.asarray(mask, dtype=bool)).tobytes()).hexdigest()[:16]


def find_test_sets(run: RunFolder) -> tuple[Optional[Path], Optional[Path]]:
    """(clean test set, triggered test set) written by the backdoor lab beside the run's ground truth or
    training data (``test_clean.npz`` / ``test_poisoned.npz``); None for each one that is not there."""
    cfg = dict(run.meta.get("config") or {})
    folders = []
    for key in ("ground_truth", "data"):
        value = cfg.get(key)
        if value and not str(value).startswith("builtin:"):
            p = Path(str(value))
            folders.append(p if p.is_dir() else p.parent)
    found: list[Optional[Path]] = [None, None]
    for folder in folders:
        for j, name in enumerate(TEST_FILES):
            if found[j] is None and (folder / name).is_file():
                found[j] = folder / name
    return found[0], found[1]


def _augment_name(recorded) -> Optional[str]:
    """The trainer's ``augment`` argument for a recorded ``{"crop_padding": p, "flip": f}``."""
    if not isinstance(recorded, dict):
        return recorded if isinstance(recorded, str) else None
    crop, flip = bool(recorded.get("crop_padding")), bool(recorded.get("flip"))
    return {(True, True): "crop+flip", (True, False): "crop", (False, True): "flip"}.get((crop, flip), "none")


def recorded_recipe(model) -> dict:
    """The training settings a model file records (``flare train`` and the demo store the trainer's config
    in the checkpoint's description); {} when it records none."""
    desc = dict(getattr(model, "description", None) or {})
    for history in (desc.get("history"), (desc.get("result") or {}).get("history")):
        config = (history or {}).get("config") if isinstance(history, dict) else None
        if isinstance(config, dict):
            recipe = {k: config[k] for k in RECIPE_KEYS if config.get(k) is not None}
            if "augment" in config:
                recipe["augment"] = _augment_name(config["augment"])
            return recipe
    return {}


def model_arch(model) -> Optional[str]:
    """The model's architecture name when it is known (state_dict files with a description), else None."""
    return getattr(model, "arch", None) or (getattr(model, "description", None) or {}).get("arch")


def _metrics(model, clean: ImageDataset, poisoned: Optional[ImageDataset], preprocessing=None,
             device: Optional[str] = None) -> dict:
    from flare_core.metrics import attack_success_rate, benign_accuracy
    from flare_core.models.training import evaluate

    _, pred = evaluate(model, clean, preprocessing, device=device)
    out = {"benign_accuracy": benign_accuracy(pred, clean.labels), "attack_success_rate": None}
    if poisoned is not None:
        _, pred = evaluate(model, poisoned, preprocessing, device=device)
        out["attack_success_rate"] = attack_success_rate(pred, poisoned.labels)
    return out


def _load_test(path, what: str, train: ImageDataset) -> ImageDataset:
    from flare_core.data import load_dataset

    ds = load_dataset(path)
    if tuple(ds.image_shape) != tuple(train.image_shape):
        raise FlareError(f"The {what} has {'x'.join(map(str, ds.image_shape))} images but the training set has "
                         f"{'x'.join(map(str, train.image_shape))}; give the test set made with this data.")
    if len(ds.labels) and (ds.labels.min() < 0 or ds.labels.max() >= train.num_classes):
        raise FlareError(f"The {what} has labels outside the training set's {train.num_classes} classes.")
    return ds


def retrain_purified(
    run: RunFolder,
    dataset: ImageDataset,
    model,
    *,
    test_data: Union[str, Path, ImageDataset, None] = None,
    poisoned_test_data: Union[str, Path, ImageDataset, None] = None,
    arch: Optional[str] = None,
    epochs: Optional[int] = None,
    seed: Optional[int] = None,
    device: Optional[str] = None,
    num_threads: Optional[int] = None,
    control: bool = False,
    save: bool = True,
    progress: Optional[ProgressCallback] = None,
) -> dict:
    """Retrain ``model``'s architecture on the samples ``run`` keeps and measure BA/ASR before and after.

    ``dataset`` is the run's training set (same samples, same order); ``model`` the analysed LoadedModel
    ("before"). Test sets: paths or datasets; by default the lab's files found by :func:`find_test_sets`.
    A clean test set is required (BA), the triggered one is optional (ASR is None without it).
    ``arch`` is needed only when the model file does not name its architecture (TorchScript, ``.pt2``).
    ``epochs``/``seed`` override the recorded recipe. With ``control`` a second model is trained the same way
    on the whole analysed set (nothing removed), for a like-for-like comparison: the analysed model may have
    been trained otherwise (another recipe, more data). With ``save`` the result (and the retrained model) is
    written into the run folder atomically. Progress stages: ``retrain-before``, ``train``, ``retrain-after``
    (and ``train-control``, ``retrain-control``). Returns the result dict (also what ``retrain.json`` holds).
    """
    from flare_core.models.preprocessing import Preprocessing
    from flare_core.models.training import train_model

    progress = ensure_progress(progress)
    if len(dataset) != run.n_samples:
        raise FlareError(f"The dataset has {len(dataset):,} samples but the run analysed {run.n_samples:,}; "
                         "load the dataset the run was made from.")
    arch = arch or model_arch(model)
    if not arch:
        raise FlareError("The model file does not name its architecture (TorchScript or .pt2), so it cannot be "
                         "retrained as is; pick the architecture to train.")
    found = find_test_sets(run)
    test_data = test_data if test_data is not None else found[0]
    poisoned_test_data = poisoned_test_data if poisoned_test_data is not None else found[1]
    if test_data is None:
        raise FlareError("Retraining needs a clean test set to measure benign accuracy (e.g. test_clean.npz from "
                         "`flare attack`); none was given or found next to the data.")
    clean = test_data if isinstance(test_data, ImageDataset) else _load_test(test_data, "clean test set", dataset)
    poisoned = None
    if poisoned_test_data is not None:
        poisoned = poisoned_test_data if isinstance(poisoned_test_data, ImageDataset) else \
            _load_test(poisoned_test_data, "triggered test set", dataset)

    removal = run.removal_mask()
    keep = np.flatnonzero(~removal)
    if len(keep) == 0:
        raise FlareError("Every sample is marked for removal, so there is nothing to retrain on.")
    purified = dataset.subset(keep)  # a copy: the source dataset is never modified

    t0 = time.perf_counter()
    progress("retrain-before", 0, 1)
    before = _metrics(model, clean, poisoned)
    progress("retrain-before", 1, 1)

    recipe = recorded_recipe(model)
    if epochs is not None:
        recipe["epochs"] = int(epochs)
    if seed is not None:
        recipe["seed"] = int(seed)
    pre = getattr(model, "preprocessing", None) or Preprocessing()
    # train at the data's own size (the trainer builds the network for it); keep channels and normalisation
    pre = Preprocessing(size=None, channels=pre.channels, mean=pre.mean, std=pre.std)
    device = device or getattr(model, "device", None) or "cpu"
    t_train = time.perf_counter()
    net, history = train_model(purified, arch=arch, device=device, preprocessing=pre, num_threads=num_threads,
                               progress=progress, **recipe)
    train_seconds = time.perf_counter() - t_train

    progress("retrain-after", 0, 1)
    after = _metrics(net, clean, poisoned, pre, device=device)
    progress("retrain-after", 1, 1)

    control_result = None
    if control:
        full, _ = train_model(dataset, arch=arch, device=device, preprocessing=pre, num_threads=num_threads,
                              progress=lambda s, d, t: progress("train-control" if s == "train" else s, d, t),
                              **recipe)
        progress("retrain-control", 0, 1)
        control_result = {**_metrics(full, clean, poisoned, pre, device=device), "n_train": int(len(dataset))}
        progress("retrain-control", 1, 1)
        del full

    truth = run.ground_truth()
    result = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arch": arch,
        "recipe": history.get("config", {}),
        "n_train_before": int(run.n_samples),
        "n_train_after": int(len(keep)),
        "n_removed": int(removal.sum()),
        "n_decisions": len(run.decisions()),
        "removal_digest": removal_digest(removal),
        "poisoned_left": int(truth[keep].sum()) if truth is not None else None,
        "test_data": None if isinstance(test_data, ImageDataset) else str(test_data),
        "poisoned_test_data": None if poisoned_test_data is None or isinstance(poisoned_test_data, ImageDataset)
        else str(poisoned_test_data),
        "n_test": int(len(clean)),
        "n_poisoned_test": int(len(poisoned)) if poisoned is not None else None,
        "before": before,
        "after": after,
        "control": control_result,
        "train_loss": [round(float(x), 5) for x in history.get("train_loss", [])],
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "model_file": MODEL_FILE if save else None,
    }
    if save:
        from flare_core.models import save_checkpoint

        h, w, c = purified.image_shape
        save_checkpoint(net.to("cpu"), Path(run.path) / MODEL_FILE, arch=arch, num_classes=dataset.num_classes,
                        in_channels=pre.channels or c, image_size=(h, w), preprocessing=pre, classes=list(dataset.classes),
                        extra={"trained_on": f"purified set of run {Path(run.path).name}", "history": history})
        write_json(Path(run.path) / RESULT_FILE, result)  # last: its presence means the model is there too
    logger.info("retrained %s on %d of %d samples: BA %.4f -> %.4f, ASR %s -> %s", arch, len(keep), run.n_samples,
                before["benign_accuracy"], after["benign_accuracy"], before["attack_success_rate"],
                after["attack_success_rate"])
    return result


def load_result(run: RunFolder) -> Optional[dict]:
    """The stored retraining result of a run, or None (none yet, or unreadable)."""
    import json

    p = Path(run.path) / RESULT_FILE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("unreadable %s", p, exc_info=True)
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def is_current(result: dict, run: RunFolder) -> bool:
    """Whether a stored result was made with the run's current removal set (flags + decisions)."""
    return result.get("removal_digest") == removal_digest(run.removal_mask())
