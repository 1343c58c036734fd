"""BadNets trigger (Gu et al., 2017): a small fixed patch stamped on the image.

Default: a 3x3 black/white checkerboard 1 pixel from the bottom-right corner (the patch side grows with
the image, ``max(3, round(min(H, W) * 3 / 32))``, so it stays ~3x3 for 28 and 32 px images).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from flare_core.attacks._apply import check_batch, mask_to_patch, paste_patch, trigger_rng
from flare_core.attacks._params import PATCH_PARAM_HELP, as_choice, merge_params, patch_origin, patch_placement

NAME = "badnets"
PATTERNS = ("checkerboard", "white", "random")
DEFAULTS: Mapping[str, Any] = {"size": None, "position": "bottom-right", "margin": 1, "pattern": "checkerboard"}
PARAM_HELP: Mapping[str, str] = {
    "size": "side of the square patch in pixels (None or 'auto': max(3, round(min(H, W) * 3 / 32)))",
    **PATCH_PARAM_HELP,
    "pattern": "'checkerboard' (black/white), 'white', or 'random' (random colours from the seed)",
}


def default_size(image_shape: tuple) -> int:
    """The patch side for an image: 3 for 28/32 px images, scaled for larger ones."""
    return max(3, int(round(min(image_shape[:2]) * 3 / 32)))


def resolve_params(image_shape: tuple, params: Optional[Mapping[str, Any]] = None) -> dict:
    """All parameters with defaults filled in and validated for ``image_shape`` (H, W, C)."""
    p = merge_params(NAME, DEFAULTS, params)
    return {**patch_placement(NAME, p, default_size(image_shape), image_shape),
            "pattern": as_choice(NAME, "pattern", p["pattern"], PATTERNS)}


def make_patch(size: int, channels: int, pattern: str, seed: int) -> np.ndarray:
    """The (size, size, C) uint8 patch."""
    if pattern == "random":
        return trigger_rng(seed, NAME).integers(0, 256, size=(size, size, channels), dtype=np.uint8)
    if pattern == "white":
        return np.full((size, size, channels), 255, dtype=np.uint8)
    rows, cols = np.indices((size, size))
    return mask_to_patch((rows + cols) % 2 == 0, channels)


@dataclass(frozen=True)
class PatchTrigger:
    """Stamps ``patch`` at (row, col) with opacity ``alpha`` on every image of a batch."""

    image_shape: tuple
    patch: np.ndarray
    row: int
    col: int
    alpha: float = 1.0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        check_batch(images, self.image_shape)
        return paste_patch(images, self.patch, self.row, self.col, self.alpha)


def make_trigger(image_shape: tuple, *, seed: int = 0, **params: Any) -> PatchTrigger:
    """The BadNets trigger for (H, W, C) images."""
    image_shape = tuple(int(v) for v in image_shape)
    p = resolve_params(image_shape, params)
    row, col = patch_origin(NAME, p["position"], p["size"], p["margin"], image_shape[:2])
    patch = make_patch(p["size"], image_shape[2], p["pattern"], seed)
    return PatchTrigger(image_shape, patch, row, col)
