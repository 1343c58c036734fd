"""Shared helpers that apply a trigger to a uint8 batch without touching the input."""
from __future__ import annotations

import zlib
from typing import Protocol

import numpy as np

from flare_core.errors import FlareError


class Trigger(Protocol):
    """A trigger built for one image shape: ``trigger(images)`` returns a new triggered uint8 batch."""

    image_shape: tuple

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def check_batch(images: np.ndarray, image_shape: tuple) -> np.ndarray:
    """``images`` if it is an (N, H, W, C) uint8 batch of ``image_shape`` images, else a FlareError."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise FlareError("A trigger needs an (N, H, W, C) uint8 image array; convert the images first.")
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise FlareError(
            f"The trigger was built for {tuple(image_shape)} images but got {tuple(images.shape[1:])}; "
            f"build the trigger for this image size."
        )
    return images


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer and clip to 0..255."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def blend(images: np.ndarray, pattern: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * images + alpha * pattern`` rounded to uint8 (pattern broadcasts over the batch)."""
    if alpha == 1.0:
        return np.broadcast_to(pattern, images.shape).astype(np.uint8, copy=True)
    mixed = (1.0 - alpha) * images.astype(np.float32) + alpha * pattern.astype(np.float32)
    return to_uint8(mixed)


def paste_patch(images: np.ndarray, patch: np.ndarray, row: int, col: int, alpha: float = 1.0) -> np.ndarray:
    """A copy of ``images`` with the (h, w, C) ``patch`` blended in at (row, col) with opacity ``alpha``."""
    out = images.copy()
    ph, pw = patch.shape[:2]
    region = out[:, row : row + ph, col : col + pw, :]
    out[:, row : row + ph, col : col + pw, :] = blend(region, patch, alpha)
    return out


def mask_to_patch(mask: np.ndarray, channels: int) -> np.ndarray:
    """A binary (h, w) mask as an (h, w, C) uint8 patch: 1 -> 255 (white), 0 -> 0 (black)."""
    patch = np.where(mask.astype(bool), 255, 0).astype(np.uint8)
    return np.repeat(patch[:, :, None], channels, axis=2)


def trigger_rng(seed: int, attack: str) -> np.random.Generator:
    """The random stream of an attack's trigger: fixed by ``seed``, independent of ``default_rng(seed)``
    (so a trigger never coincides with data a user drew from the same seed)."""
    return np.random.default_rng([int(seed), zlib.crc32(attack.encode())])
