"""Poison a dataset with a registered attack, keeping the ground truth."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Mapping, Optional

import numpy as np

from flare_core.attacks import selection
from flare_core.attacks._apply import Trigger
from flare_core.attacks.ground_truth import GroundTruth
from flare_core.attacks.registry import MODES, AttackSpec, get_attack
from flare_core.dataset import ImageDataset
from flare_core.errors import FlareError
from flare_core.progress import ProgressCallback, ensure_progress

logger = logging.getLogger(__name__)

# Independent random streams derived from the one user seed.
_SELECT_STREAM = 1
_CROSS_SELECT_STREAM = 2
_CHUNK = 1024


def _check_mode(spec: AttackSpec, mode: str) -> str:
    if mode not in MODES:
        raise FlareError(f"Unknown poisoning mode {mode!r}; choose one of: {', '.join(MODES)}.")
    if mode not in spec.modes:
        raise FlareError(f"The {spec.title} attack supports only {', '.join(spec.modes)}, not {mode}.")
    return mode


def _check_dataset(dataset: ImageDataset) -> None:
    if dataset.num_classes < 2:
        raise FlareError("Poisoning needs a dataset with at least two classes.")
    if len(dataset) and (dataset.labels.min() < 0 or dataset.labels.max() >= dataset.num_classes):
        raise FlareError("The dataset has labels outside its class list; reload it.")


def _apply(trigger, images: np.ndarray, progress: ProgressCallback, stage: str) -> np.ndarray:
    """The trigger applied chunk by chunk, reporting progress."""
    out = np.empty_like(images)
    progress(stage, 0, len(images))
    for start in range(0, len(images), _CHUNK):
        out[start : start + _CHUNK] = trigger(images[start : start + _CHUNK])
        progress(stage, min(start + _CHUNK, len(images)), len(images))
    return out


def _prepare(dataset: ImageDataset, attack: str, target, mode: str, seed: int, params) -> tuple:
    spec = get_attack(attack)
    mode = _check_mode(spec, mode)
    seed = selection.check_seed(seed)
    _check_dataset(dataset)
    target = selection.check_target(target, dataset.num_classes, mode)
    resolved = spec.resolve_params(dataset.image_shape, params)
    trigger = spec.make_trigger(dataset.image_shape, seed=seed, **resolved)
    return spec, mode, seed, target, resolved, trigger


def _cross_samples(spec: AttackSpec, resolved: dict, n: int, poisoned: np.ndarray, seed: int) -> np.ndarray:
    """WaNet noise-mode sample indices (cross_ratio per poisoned sample), disjoint from the poisoned ones."""
    ratio = float(resolved.get("cross_ratio", 0.0)) if spec.supports_cross else 0.0
    count = int(np.floor(ratio * len(poisoned) + 0.5))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    pool = np.setdiff1d(np.arange(n), poisoned)
    rng = np.random.default_rng([seed, _CROSS_SELECT_STREAM])
    return selection.choose(pool, count, rng, "unpoisoned images for noise-mode cross samples")


def poison_dataset(
    dataset: ImageDataset,
    attack: str,
    *,
    rate: float = 0.1,
    target: Optional[int] = 0,
    mode: str = "all-to-one",
    seed: int = 0,
    params: Optional[Mapping[str, Any]] = None,
    progress: Optional[ProgressCallback] = None,
) -> tuple[ImageDataset, GroundTruth]:
    """A poisoned copy of ``dataset`` and its ground truth; ``dataset`` itself is never modified.

    rate: fraction of the WHOLE dataset to poison (0.001..0.2), rounded to the nearest count.
    all-to-one: poisons are drawn uniformly from non-target images and relabelled ``target``.
    all-to-all: poisons are drawn from all images and relabelled ``(label + 1) % K``; ``target`` is ignored.
    Clean-label attacks (SIG) poison target-class images only and keep their labels.
    Poisoned samples keep their index and source; every other sample is byte-identical to the input
    (except WaNet noise-mode cross samples when ``cross_ratio`` > 0, listed in ``cross_indices``).
    The same seed gives the same trigger and the same indices.
    """
    progress = ensure_progress(progress)
    spec, mode, seed, target, resolved, trigger = _prepare(dataset, attack, target, mode, seed, params)
    rate = selection.check_rate(rate)
    count = selection.poison_count(rate, len(dataset))
    pool = selection.candidates(dataset.labels, mode, target, spec.clean_label)
    if spec.clean_label and count > len(pool):
        raise FlareError(
            f"The clean-label {spec.title} attack can only poison the {len(pool)} images of the target class "
            f"{dataset.classes[target]!r} but rate {rate} needs {count}; "
            f"lower the rate or choose a larger target class."
        )
    what = "target-class images" if spec.clean_label else ("non-target images" if mode == "all-to-one" else "images")
    idx = selection.choose(pool, count, np.random.default_rng([seed, _SELECT_STREAM]), what)

    images = dataset.images.copy()
    labels = dataset.labels.copy()
    original = labels[idx].copy()
    images[idx] = _apply(trigger, images[idx], progress, "poisoning")
    labels[idx] = selection.new_labels(original, mode, target, dataset.num_classes, spec.clean_label)

    cross = _cross_samples(spec, resolved, len(dataset), idx, seed)
    if len(cross):
        images[cross] = trigger.cross(images[cross], seed=seed)

    poisoned = replace(
        dataset, images=images, labels=labels, classes=list(dataset.classes),
        sources=list(dataset.sources), skipped=list(dataset.skipped),
    )
    truth = GroundTruth(
        poisoned_indices=idx, original_labels=original, new_labels=labels[idx], attack=spec.name,
        params=resolved, mode=mode, target=target, rate=rate, seed=seed, n_total=len(dataset),
        clean_label=spec.clean_label, cross_indices=cross, classes=list(dataset.classes),
    )
    logger.info("Poisoned %d of %d images with %s (%s, target %s, seed %d).",
                len(idx), len(dataset), spec.name, mode, target, seed)
    return poisoned, truth


def poison_test_set(
    test_dataset: ImageDataset,
    attack: str,
    *,
    target: Optional[int] = 0,
    mode: str = "all-to-one",
    seed: int = 0,
    params: Optional[Mapping[str, Any]] = None,
    progress: Optional[ProgressCallback] = None,
) -> ImageDataset:
    """The triggered test set for measuring the attack success rate (ASR).

    all-to-one (and clean-label SIG): every image whose label is not ``target``, triggered, labelled ``target``.
    all-to-all: every image, triggered, labelled ``(label + 1) % K``.
    Use the training run's seed and params to get the same trigger. Sources are kept, so each sample
    can be traced to its test-set image; the input is never modified.
    """
    progress = ensure_progress(progress)
    spec, mode, seed, target, _, trigger = _prepare(test_dataset, attack, target, mode, seed, params)
    keep = np.flatnonzero(test_dataset.labels != target) if mode == "all-to-one" else np.arange(len(test_dataset))
    if len(keep) == 0:
        raise FlareError("The test set has no images outside the target class; use a test set with other classes.")
    subset = test_dataset.subset(keep)
    subset.images = _apply(trigger, subset.images, progress, "poisoning test set")
    subset.labels = selection.new_labels(subset.labels, mode, target, test_dataset.num_classes, clean_label=False)
    subset.classes = list(test_dataset.classes)
    return subset


def poison_test_set_like(test_dataset: ImageDataset, truth: GroundTruth,
                         progress: Optional[ProgressCallback] = None) -> ImageDataset:
    """:func:`poison_test_set` with the attack, target, mode, seed and params of a poisoning run."""
    return poison_test_set(test_dataset, truth.attack, target=truth.target, mode=truth.mode,
                           seed=truth.seed, params=truth.params, progress=progress)


def apply_trigger(
    images: np.ndarray, attack: str, *, seed: int = 0, params: Optional[Mapping[str, Any]] = None
) -> np.ndarray:
    """``images`` (N, H, W, C uint8) with the attack's trigger, e.g. for a preview; input unchanged."""
    spec = get_attack(attack)
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        raise FlareError("apply_trigger needs an (N, H, W, C) uint8 image array.")
    shape = tuple(images.shape[1:])
    trigger: Trigger = spec.make_trigger(shape, seed=selection.check_seed(seed), **spec.resolve_params(shape, params))
    return trigger(images)
