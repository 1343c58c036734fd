"""Does the model obey an image-wide transform as a trigger, and which training samples depend on it?

Some backdoors are not a patch but a property of the whole image: WaNet's warp resamples every pixel
(bilinear interpolation at sub-pixel offsets smooths the image). Sharpening is the other end of the same
axis (fine grain, as a blended noise pattern adds); the benchmark's Blended models do not obey it.
A model that learnt such a trigger obeys the *property*: on the Fashion-MNIST WaNet models of the
benchmark, blurring any test image sends 100 % of them to the target class (a clean model: about 1 %).

Two passes, both plain forward passes of the model (eval mode, restored; ``predict_logits``):

1. **probe** (:func:`probe_shortcuts`): a stratified sample of the data (``per_class`` images of each
   class; by default 200 for ten classes, about 2,000 in all for more) is classified before and after each transform of :data:`AXES` (smoothing, sharpening). For
   each transform and class ``c``, ``moved_in`` is the share of the sampled images predicted as another
   class before that are predicted ``c`` after. A shortcut is a transform that moves at least
   ``bar`` of them into one class.
2. **counter test** (:func:`counter_test`): every training sample *labelled* with the shortcut's class is
   classified after the opposite transform (sharpening undoes smoothing's trigger, and the other way
   round). A dirty-label sample whose label was carried by the trigger loses it and falls back to the
   class its content shows; a genuine sample keeps its label, its content being unchanged. ``drop`` is
   how far the log-probability of the label falls (natural log units).

The detector side (what to flag from this evidence) is :mod:`flare_core.detectors.shortcut_stage`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np

from flare_core.dataset import ImageDataset
from flare_core.progress import ProgressCallback, ensure_progress

logger = logging.getLogger(__name__)

BLUR_SIGMA = 1.0
SHARPEN_AMOUNT = 1.0
DEFAULT_PER_CLASS = 200
PROBE_BUDGET = 2000  # images the probe classifies (per transform) when per_class is not given
MIN_PER_CLASS = 20
DEFAULT_SHORTCUT_BAR = 0.5
_CHUNK = 2048


def _gaussian_blur(x, sigma: float):
    """Separable Gaussian blur (radius 2, replicate padding) of a float (N, C, H, W) tensor."""
    import torch
    import torch.nn.functional as F

    r = 2
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t ** 2) / (2.0 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _apply(images: np.ndarray, fn: Callable) -> np.ndarray:
    """Apply a float-tensor transform to uint8 (N, H, W, C) images in chunks; uint8 out, input untouched."""
    import torch

    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be a uint8 (N, H, W, C) array, got {images.dtype} {images.shape}.")
    if min(images.shape[1:3]) < 3:
        raise ValueError(f"images must be at least 3x3 pixels to blur or sharpen, got {images.shape[1:3]}.")
    out = np.empty_like(images)
    with torch.no_grad():
        for s in range(0, len(images), _CHUNK):
            x = torch.from_numpy(images[s:s + _CHUNK].astype(np.float32)).permute(0, 3, 1, 2)
            y = fn(x).round_().clamp_(0, 255)
            out[s:s + _CHUNK] = y.permute(0, 2, 3, 1).numpy().astype(np.uint8)
    return out


def smooth(images: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Gaussian blur of uint8 (N, H, W, C) images."""
    return _apply(images, lambda x: _gaussian_blur(x, sigma))


def sharpen(images: np.ndarray, amount: float = SHARPEN_AMOUNT, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Unsharp masking of uint8 (N, H, W, C) images: ``x + amount * (x - blur(x))``."""
    return _apply(images, lambda x: x + amount * (x - _gaussian_blur(x, sigma)))


# transform name -> (the transform, the name of the transform that undoes it)
AXES: Mapping[str, tuple] = {"smooth": (smooth, "sharpen"), "sharpen": (sharpen, "smooth")}


@dataclass
class ShortcutEvidence:
    """What the two passes found. ``drop`` and ``after_class`` are per sample of the whole dataset:
    NaN / -1 for samples not labelled ``target`` (or everywhere when no shortcut was found)."""

    moved_in: dict  # transform -> (K,) share of other-class sampled images moved into each class
    sampled: int
    bar: float
    transform: Optional[str] = None
    counter: Optional[str] = None
    target: Optional[int] = None
    drop: Optional[np.ndarray] = None
    after_class: Optional[np.ndarray] = None
    seconds: dict = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.target is not None

    def summary(self) -> dict:
        """A JSON-able record for the run's report (no per-sample arrays)."""
        strongest = {t: {"class": int(np.argmax(v)), "moved_in": round(float(np.max(v)), 4)}
                     for t, v in self.moved_in.items()}
        return {"sampled": int(self.sampled), "bar": self.bar, "strongest": strongest, "found": self.found,
                "transform": self.transform, "counter": self.counter, "target": self.target,
                "seconds": dict(self.seconds)}


def default_per_class(n_classes: int) -> int:
    """Images per class for the probe: 200 for ten classes, fewer for many (about 2,000 in all, at least 20)."""
    return int(min(DEFAULT_PER_CLASS, max(MIN_PER_CLASS, PROBE_BUDGET // max(int(n_classes), 1))))


def resolve_per_class(per_class: Optional[int], n_classes: int) -> int:
    """``per_class`` checked (a positive integer), or :func:`default_per_class` when it is None."""
    if per_class is None:
        return default_per_class(n_classes)
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}.")
    return per_class


def stratified_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of up to ``per_class`` samples of every class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        picks.append(rng.choice(members, min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=int)


def moved_in_shares(before: np.ndarray, after: np.ndarray, n_classes: int) -> np.ndarray:
    """(K,) for each class c: share of the samples predicted != c before that are predicted c after."""
    before, after = np.asarray(before), np.asarray(after)
    shares = np.zeros(n_classes)
    for c in range(n_classes):
        others = before != c
        shares[c] = float((after[others] == c).mean()) if others.any() else 0.0
    return shares


def probe_shortcuts(model, dataset: ImageDataset, *, per_class: Optional[int] = None,
                    bar: float = DEFAULT_SHORTCUT_BAR, seed: int = 0, batch_size: int = 256,
                    progress: Optional[ProgressCallback] = None) -> ShortcutEvidence:
    """Pass 1 (module docstring): which transform of :data:`AXES`, if any, the model obeys as a trigger."""
    import time

    from flare_core.models.training import predict_logits

    if not 0.0 < bar <= 1.0:
        raise ValueError(f"bar must be in (0, 1], got {bar!r}.")
    per_class = resolve_per_class(per_class, dataset.num_classes)
    progress = ensure_progress(progress)
    t0 = time.perf_counter()
    labels = np.asarray(dataset.labels)
    k = int(dataset.num_classes)
    idx = stratified_sample(labels, per_class, seed)
    images = dataset.images[idx]
    progress("shortcut-probe", 0, len(AXES) + 1)
    before = predict_logits(model, images, batch_size=batch_size).argmax(1)
    moved = {}
    for i, (name, (fn, _)) in enumerate(AXES.items()):
        progress("shortcut-probe", i + 1, len(AXES) + 1)
        after = predict_logits(model, fn(images), batch_size=batch_size).argmax(1)
        moved[name] = moved_in_shares(before, after, k)
    ev = ShortcutEvidence(moved_in=moved, sampled=len(idx), bar=float(bar))
    best = max(moved, key=lambda t: float(np.max(moved[t])))
    if float(np.max(moved[best])) >= bar:
        ev.transform, ev.counter, ev.target = best, AXES[best][1], int(np.argmax(moved[best]))
        logger.info("the model obeys '%s' as a trigger: it moves %.0f%% of other images into class %d",
                    best, 100 * float(np.max(moved[best])), ev.target)
    ev.seconds["probe"] = round(time.perf_counter() - t0, 3)
    progress("shortcut-probe", len(AXES) + 1, len(AXES) + 1)
    return ev


def counter_test(model, dataset: ImageDataset, evidence: ShortcutEvidence, *, batch_size: int = 256,
                 logits: Optional[np.ndarray] = None,
                 progress: Optional[ProgressCallback] = None) -> ShortcutEvidence:
    """Pass 2 (module docstring): fill ``drop`` and ``after_class`` for the samples labelled the target.

    ``logits``: the (N, K) logits of the untransformed data when a pass already has them (FLARE default's
    feature pass does); then only the transformed images are classified."""
    import time

    from scipy.special import log_softmax

    from flare_core.models.training import predict_logits

    n = len(dataset)
    evidence.drop = np.full(n, np.nan)
    evidence.after_class = np.full(n, -1, dtype=int)
    if not evidence.found:
        return evidence
    progress = ensure_progress(progress)
    t0 = time.perf_counter()
    c = evidence.target
    members = np.flatnonzero(np.asarray(dataset.labels) == c)
    counter_fn = AXES[evidence.counter][0]
    if logits is not None:
        logits = np.asarray(logits)
        if logits.ndim != 2 or len(logits) != n or logits.shape[1] <= c:
            raise ValueError(f"logits must be (N, K) for the {n} samples with K > {c}, got {logits.shape}.")
    lp_before = np.empty(len(members))
    lp_after = np.empty(len(members))
    after_cls = np.empty(len(members), dtype=int)
    step = max(batch_size * 8, 1)
    for s in range(0, len(members), step):
        progress("shortcut-test", s, len(members))
        chunk = dataset.images[members[s:s + step]]
        raw = (logits[members[s:s + step]] if logits is not None
               else predict_logits(model, chunk, batch_size=batch_size))
        before = log_softmax(np.asarray(raw, dtype=np.float64), axis=1)
        after = log_softmax(predict_logits(model, counter_fn(chunk), batch_size=batch_size).astype(np.float64), axis=1)
        lp_before[s:s + step], lp_after[s:s + step] = before[:, c], after[:, c]
        after_cls[s:s + step] = after.argmax(1)
    evidence.drop[members] = lp_before - lp_after
    evidence.after_class[members] = after_cls
    evidence.seconds["test"] = round(time.perf_counter() - t0, 3)
    progress("shortcut-test", len(members), len(members))
    return evidence


def shortcut_evidence(model, dataset: ImageDataset, **kwargs) -> ShortcutEvidence:
    """Both passes: the probe, then (when it finds a shortcut) the counter test of its class."""
    logits = kwargs.pop("logits", None)
    test_kw = {k: kwargs[k] for k in ("batch_size", "progress") if k in kwargs}
    return counter_test(model, dataset, probe_shortcuts(model, dataset, **kwargs), logits=logits, **test_kw)
