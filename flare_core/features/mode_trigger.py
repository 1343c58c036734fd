"""Does a group of a class carry a trigger?  Its mean image difference from the rest, put on other images.

Two uses: FLARE default's minority modes (:func:`mode_trigger_evidence`, below) and, after any detector, the
flagged samples of each class as evidence for a review (:func:`flagged_group_triggers`); both run
:func:`trigger_test`.

:mod:`flare_core.detectors.minority_mode` finds, per class, a light separate component along the class's
top singular direction of the penultimate features.  Most such modes are poison (73-100 % over the zoo), but
one genuine sub-population passes the test too, so a mode is flagged only with a second, model-level sign of
a backdoor.  The loss signature (the model fits the members far better than the rest of the class) is one;
it fails where the model fits the poison *worse* (CIFAR-10 Blended 1 % trained 30 epochs: 0.05x).

This is another, closer to the definition of a backdoor: poison shares a trigger, so the members' average
image differs from the rest of the class by (mostly) the trigger.  ``delta = mean(members) - mean(rest)``
is added to a stratified sample of *other* classes' images that the model does not already put in the class,
and ``moved_in`` is the share the model then puts in the class.  A genuine sub-population's difference is
content (a trouser's cut), which does not turn a shirt into a trouser.  As a control, the same is done with
the mean difference of a random subset of the class of the same size, scaled to the same norm: a
perturbation as strong, without the mode's structure (``moved_in_control``).  A patch or blend trigger
survives averaging; a warp (WaNet) does not, and its modes keep relying on the loss signature.

Plain forward passes only (``predict_logits``: eval mode, restored), two per class that holds a mode, of
``per_class`` images of each other class; nothing runs when no class holds one.  The decision (what to flag)
is :func:`flare_core.detectors.minority_mode.minority_flags`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from flare_core.dataset import ImageDataset
from flare_core.features.shortcuts import resolve_per_class, stratified_sample
from flare_core.progress import ProgressCallback, ensure_progress

logger = logging.getLogger(__name__)


@dataclass
class ModeTriggerEvidence:
    """The minority modes found (``membership``, per-sample; ``classes``, per class as
    :func:`~flare_core.detectors.minority_mode.class_minority_modes` reports them) and, for each class
    that holds one, the trigger test's ``moved_in``, ``moved_in_control``, ``probe_n`` and ``delta_rms``
    added to its record.  ``random_state`` is the seed the modes were found with: FLARE reuses them only
    when it runs with the same seed."""

    membership: np.ndarray
    classes: dict
    random_state: Optional[int]
    digest: str = ""  # of the features the modes were found in (:func:`latent_digest`)
    seconds: dict = field(default_factory=dict)

    def matches(self, latent: Any, random_state: Optional[int]) -> bool:
        """Whether these modes were found in ``latent`` with ``random_state`` (FLARE reuses them only then)."""
        return self.random_state == random_state and self.digest == latent_digest(latent)

    def tested(self) -> dict:
        """class -> its trigger test record, for the classes that hold a mode."""
        return {c: e for c, e in self.classes.items() if "moved_in" in e}


def latent_digest(latent: Any) -> str:
    """A digest of the feature matrix's shape, dtype and bytes (which features the modes were found in)."""
    import hashlib

    a = np.ascontiguousarray(latent)
    h = hashlib.blake2b(f"{a.shape}{a.dtype.str}".encode(), digest_size=16)
    h.update(a.data if a.size else b"")
    return h.hexdigest()


def added_difference(images: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) ``images + delta`` (float (H, W, C)), rounded and clipped to [0, 255]; input untouched."""
    out = np.asarray(images, dtype=np.float32) + np.asarray(delta, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mean_difference(images: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """float (H, W, C): mean image of the rows where ``inside`` is True minus the mean of the others."""
    inside = np.asarray(inside, dtype=bool)
    a = np.asarray(images[inside], dtype=np.float64).mean(axis=0)
    b = np.asarray(images[~inside], dtype=np.float64).mean(axis=0)
    return (a - b).astype(np.float32)


def trigger_test(model: Any, dataset: ImageDataset, c: int, members: np.ndarray, probe: np.ndarray,
                 before: np.ndarray, rng: np.random.Generator, *, batch_size: int = 256) -> dict:
    """The test of one class ``c``: ``members`` (bool, one per sample labelled ``c``, in dataset order) is
    the group; ``probe`` the indices of the images it may be put on and ``before`` the model's classes for
    them unchanged.  Returns ``moved_in``, ``moved_in_control``, ``probe_n`` and ``delta_rms`` (module
    docstring) and, of the other classes, the one whose images it moves in most above the control
    (``strongest_source``, ``source_moved_in``, ``source_moved_in_control``: an all-to-all trigger moves only
    its source class's images); or ``why_not_tested``.  ``rng`` draws the control's random subset."""
    from flare_core.detectors.minority_mode import MIN_MEMBERS
    from flare_core.models.training import predict_logits

    labels = np.asarray(dataset.labels)
    members = np.asarray(members, dtype=bool)
    in_class = np.flatnonzero(labels == c)
    if len(members) != len(in_class):
        raise ValueError(f"members must have one entry per sample of class {c} ({len(in_class)}), got {len(members)}.")
    if members.sum() < MIN_MEMBERS or (~members).sum() < MIN_MEMBERS:
        return {"why_not_tested": f"fewer than {MIN_MEMBERS} members or non-members"}
    targets = probe[(labels[probe] != c) & (np.asarray(before) != c)]
    if len(targets) == 0:
        return {"why_not_tested": "no image of another class to put the difference on"}
    images = dataset.images[in_class]
    delta = mean_difference(images, members)
    control_rows = np.zeros(len(in_class), dtype=bool)
    control_rows[rng.permutation(len(in_class))[:int(members.sum())]] = True
    control = mean_difference(images, control_rows)
    norm = float(np.linalg.norm(control))
    control = control * (float(np.linalg.norm(delta)) / norm) if norm > 0 else control
    shown = dataset.images[targets]
    after = predict_logits(model, added_difference(shown, delta), batch_size=batch_size).argmax(1)
    after_control = predict_logits(model, added_difference(shown, control), batch_size=batch_size).argmax(1)
    # per source class too: an all-to-all trigger moves only the images of the class it was taught to map here
    sources = labels[targets]
    by_source = {int(k): (float((after[sources == k] == c).mean()), float((after_control[sources == k] == c).mean()))
                 for k in np.unique(sources)}
    best = max(by_source, key=lambda k: (by_source[k][0] - by_source[k][1], -k))
    return {"moved_in": round(float((after == c).mean()), 4),
            "moved_in_control": round(float((after_control == c).mean()), 4),
            "probe_n": int(len(targets)), "delta_rms": round(float(np.sqrt(np.mean(delta ** 2))), 3),
            "strongest_source": best, "source_moved_in": round(by_source[best][0], 4),
            "source_moved_in_control": round(by_source[best][1], 4)}


def probe_images(model: Any, dataset: ImageDataset, per_class: int, seed: int, *, logits: Any = None,
                 batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(indices, the model's classes for them): the stratified sample the differences are put on."""
    from flare_core.models.training import predict_logits

    probe = stratified_sample(np.asarray(dataset.labels), per_class, seed)
    if logits is not None and len(np.asarray(logits)) == len(dataset):
        return probe, np.asarray(logits)[probe].argmax(1)
    return probe, predict_logits(model, dataset.images[probe], batch_size=batch_size).argmax(1)


def mode_trigger_evidence(model: Any, dataset: ImageDataset, latent: Any, *, logits: Any = None,
                          random_state: Optional[int] = 0, per_class: Optional[int] = None,
                          batch_size: int = 256, progress: Optional[ProgressCallback] = None) -> ModeTriggerEvidence:
    """Find the minority modes in ``latent`` (N x D penultimate features of ``dataset``, the ones FLARE is
    given) and run the trigger test (module docstring) for each class that holds one.  ``logits``: the
    feature pass's (N, K) logits, to skip classifying the probe images unchanged.  Nothing is modified."""
    from flare_core.detectors.minority_mode import class_minority_modes

    labels = np.asarray(dataset.labels)
    n = len(labels)
    latent = np.asarray(latent)
    if latent.ndim != 2 or len(latent) != n:
        raise ValueError(f"latent must be (N, D) for the {n} samples of the dataset, got shape {latent.shape}.")
    per_class = resolve_per_class(per_class, dataset.num_classes)
    progress = ensure_progress(progress)
    t0 = time.perf_counter()
    membership, classes = class_minority_modes(latent, labels, random_state=random_state)
    digest = latent_digest(latent)
    seconds = {"modes": round(time.perf_counter() - t0, 3)}
    holding = [c for c, e in classes.items() if e.get("holds")]
    if not holding:
        return ModeTriggerEvidence(membership, classes, random_state, digest, seconds)
    t1 = time.perf_counter()
    seed = 0 if random_state is None else int(random_state)
    rng = np.random.default_rng(seed)
    probe, before = probe_images(model, dataset, per_class, seed, logits=logits, batch_size=batch_size)
    for i, key in enumerate(holding):
        progress("mode-trigger", i, len(holding))
        c = int(key)
        in_class = np.flatnonzero(labels == c)
        record = classes[key]
        record.update(trigger_test(model, dataset, c, membership[in_class] > 0.5, probe, before, rng,
                                   batch_size=batch_size))
        if "moved_in" in record:
            logger.info("class %d's minority mode: its mean difference moves %.1f%% of %d other images into "
                        "the class (control %.1f%%)", c, 100 * record["moved_in"], record["probe_n"],
                        100 * record["moved_in_control"])
    progress("mode-trigger", len(holding), len(holding))
    seconds["test"] = round(time.perf_counter() - t1, 3)
    return ModeTriggerEvidence(membership, classes, random_state, digest, seconds)


@dataclass
class GroupTriggers:
    """The trigger test of the flagged samples of each class (:func:`flagged_group_triggers`): ``classes``
    maps a class to its record (``n_flagged`` and the keys of :func:`trigger_test`), ``differences`` a
    class to its group's mean image difference (float (H, W, C), the trigger as the group shows it)."""

    classes: dict
    differences: dict
    seconds: float = 0.0

    def summary(self) -> dict:
        """A JSON-able record for the run's report (no images)."""
        return {"classes": {str(c): dict(r) for c, r in self.classes.items()}, "seconds": round(self.seconds, 3)}


def flagged_group_triggers(model: Any, dataset: ImageDataset, flagged: Any, *, logits: Any = None,
                           random_state: Optional[int] = 0, per_class: Optional[int] = None,
                           batch_size: int = 256, max_classes: int = 20,
                           progress: Optional[ProgressCallback] = None) -> GroupTriggers:
    """The evidence a review asks for about a flagged group: do the flagged samples of a class share a
    trigger?  For each class with at least ``MIN_MEMBERS`` flagged samples (and as many unflagged; the
    ``max_classes`` with most flags), the trigger test (module docstring) of the flagged samples against
    the rest of their class.  Nothing is modified; two plain forward passes per class tested."""
    from flare_core.detectors.minority_mode import MIN_MEMBERS

    labels = np.asarray(dataset.labels)
    flagged = np.asarray(flagged, dtype=bool)
    if flagged.shape != labels.shape:
        raise ValueError(f"flagged must have one entry per sample ({len(labels)}), got shape {flagged.shape}.")
    per_class = resolve_per_class(per_class, dataset.num_classes)
    progress = ensure_progress(progress)
    t0 = time.perf_counter()
    counts = {int(c): int((flagged & (labels == c)).sum()) for c in np.unique(labels)}
    tested = sorted((c for c, k in counts.items() if k >= MIN_MEMBERS and (labels == c).sum() - k >= MIN_MEMBERS),
                    key=lambda c: (-counts[c], c))[:max_classes]
    out = GroupTriggers({}, {})
    if not tested:
        return out
    seed = 0 if random_state is None else int(random_state)
    rng = np.random.default_rng(seed)
    probe, before = probe_images(model, dataset, per_class, seed, logits=logits, batch_size=batch_size)
    for i, c in enumerate(sorted(tested)):
        progress("flag-trigger", i, len(tested))
        in_class = np.flatnonzero(labels == c)
        group = flagged[in_class]
        out.classes[c] = {"n_flagged": counts[c], **trigger_test(model, dataset, c, group, probe, before, rng,
                                                                  batch_size=batch_size)}
        out.differences[c] = mean_difference(dataset.images[in_class], group)
    progress("flag-trigger", len(tested), len(tested))
    out.seconds = time.perf_counter() - t0
    return out


def difference_image(delta: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) picture of a signed mean difference: mid-grey is 0, brighter / darker is more / less
    than the rest of the class, stretched so the largest difference reaches black or white."""
    delta = np.asarray(delta, dtype=np.float64)
    peak = float(np.abs(delta).max()) if delta.size else 0.0
    scaled = 127.5 + (delta * (127.5 / peak) if peak > 0 else 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
