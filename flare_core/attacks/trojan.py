"""Trojan-style patch: a larger fixed watermark-like glyph in a corner.

This is *not* TrojanNN's trigger (Liu et al., NDSS 2018), which is optimised against a trained model;
we do not optimise against any model. It is a fixed 7x7 black/white glyph (a square frame around a
smaller frame around a dot), distinct from the BadNets checkerboard, scaled with nearest-neighbour
sampling to ``max(7, round(min(H, W) * 7 / 32))`` pixels and pasted with opacity ``alpha``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from flare_core.attacks._apply import mask_to_patch
from flare_core.attacks._params import PATCH_PARAM_HELP, as_float, merge_params, patch_origin, patch_placement
from flare_core.attacks.badnets import PatchTrigger

NAME = "trojan"
GLYPH = np.array(
    [
        [1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 0, 1],
        [1, 0, 1, 0, 1, 0, 1],
        [1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 1],
        [1, 1, 1, 1, 1, 1, 1],
    ],
    dtype=np.uint8,
)
DEFAULTS: Mapping[str, Any] = {"size": None, "position": "bottom-right", "margin": 1, "alpha": 1.0}
PARAM_HELP: Mapping[str, str] = {
    "size": "side of the square watermark in pixels (None or 'auto': max(7, round(min(H, W) * 7 / 32)))",
    **PATCH_PARAM_HELP,
    "alpha": "opacity of the watermark in (0, 1]; 1 replaces the pixels",
}


def default_size(image_shape: tuple) -> int:
    return max(7, int(round(min(image_shape[:2]) * 7 / 32)))


def resolve_params(image_shape: tuple, params: Optional[Mapping[str, Any]] = None) -> dict:
    """All parameters with defaults filled in and validated for ``image_shape`` (H, W, C)."""
    p = merge_params(NAME, DEFAULTS, params)
    return {**patch_placement(NAME, p, default_size(image_shape), image_shape),
            "alpha": as_float(NAME, "alpha", p["alpha"], 0.0, 1.0, lo_open=True)}


def glyph_patch(size: int, channels: int) -> np.ndarray:
    """The 7x7 glyph resampled (nearest neighbour) to (size, size, C)."""
    idx = (np.arange(size) * GLYPH.shape[0]) // size
    return mask_to_patch(GLYPH[np.ix_(idx, idx)], channels)


def make_trigger(image_shape: tuple, *, seed: int = 0, **params: Any) -> PatchTrigger:
    """The Trojan-style trigger for (H, W, C) images (``seed`` is unused: the glyph is fixed)."""
    image_shape = tuple(int(v) for v in image_shape)
    p = resolve_params(image_shape, params)
    row, col = patch_origin(NAME, p["position"], p["size"], p["margin"], image_shape[:2])
    return PatchTrigger(image_shape, glyph_patch(p["size"], image_shape[2]), row, col, p["alpha"])
