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
from flare_core.attacks._params import as_float, as_int, as_position, merge_params, patch_origin
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
    "position": "'bottom-right', 'bottom-left', 'top-right', 'top-left' or [row, col] of the patch's top-left pixel",
    "margin": "distance in pixels from the image border when position is a corner",
    "alpha": "opacity of the watermark in (0, 1]; 1 replaces the pixels",
}


def default_size(image_shape: tuple) -> int:
    return max(7, int(round(min(image_shape[:2]) * 7 / 32)))


def resolve_params(image_shape: tuple, params: Optional[Mapping[str, Any]] = None) -> dict:
    """All parameters with defaults filled in and validated for ``image_shape`` (H, W, C)."""
    p = merge_params(NAME, DEFAULTS, params)
    size = default_size(image_shape) if p["size"] in (None, "auto") else p["size"]
    resolved = {
        "size": as_int(NAME, "size", size, 1, min(image_shape[:2])),
        "position": as_position(NAME, p["position"]),
        "margin": as_int(NAME, "margin", p["margin"], 0),
        "alpha": as_float(NAME, "alpha", p["alpha"], 0.0, 1.0, lo_open=True),
    }
    patch_origin(NAME, resolved["position"], resolved["size"], resolved["margin"], image_shape[:2])
    return resolved


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
