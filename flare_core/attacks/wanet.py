"""WaNet trigger (Nguyen & Tran, ICLR 2021): a small, smooth, fixed warp of the whole image.

Following the paper: a random k x k control grid of 2-D offsets in [-1, 1] (from the seed), normalised
to mean absolute value 1, is upsampled bicubically (align_corners) to H x W; the sampling grid is
``clip((identity + s * flow / size) * grid_rescale, -1, 1)`` (size = H for y and W for x; the paper's
square images use H for both) and the image is resampled bilinearly (``torch.nn.functional.grid_sample``,
align_corners=True). Defaults k=4, s=0.5, grid_rescale=1.

"Noise mode": the paper also warps extra *cross* samples with the trigger grid plus per-sample random
noise in [-1, 1] / size, keeping their labels, so that the model learns only the exact warp. Here this
is optional: ``cross_ratio`` (cross samples per poisoned sample; the paper uses 2) defaults to 0, i.e.
no cross samples. We poison the dataset once (static) rather than per training batch as the paper does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from flare_core.attacks._apply import check_batch, to_uint8, trigger_rng
from flare_core.attacks._params import as_float, as_int, merge_params

NAME = "wanet"
DEFAULTS: Mapping[str, Any] = {"k": 4, "s": 0.5, "grid_rescale": 1.0, "cross_ratio": 0.0}
PARAM_HELP: Mapping[str, str] = {
    "k": "side of the random control grid (2 .. min(H, W))",
    "s": "warp strength (0, 10]",
    "grid_rescale": "scale of the sampling grid (0, 2]; 1 keeps the image in place",
    "cross_ratio": "noise-mode cross samples per poisoned sample (labels kept), 0 .. 10; 0 disables",
}
_CHUNK = 512


def resolve_params(image_shape: tuple, params: Optional[Mapping[str, Any]] = None) -> dict:
    """All parameters with defaults filled in and validated for ``image_shape`` (H, W, C)."""
    p = merge_params(NAME, DEFAULTS, params)
    return {
        "k": as_int(NAME, "k", p["k"], 2, min(image_shape[:2])),
        "s": as_float(NAME, "s", p["s"], 0.0, 10.0, lo_open=True),
        "grid_rescale": as_float(NAME, "grid_rescale", p["grid_rescale"], 0.0, 2.0, lo_open=True),
        "cross_ratio": as_float(NAME, "cross_ratio", p["cross_ratio"], 0.0, 10.0),
    }


def flow_field(image_hw: tuple, k: int, seed: int) -> np.ndarray:
    """The (H, W, 2) smooth random flow (x, y offsets) upsampled from a k x k control grid."""
    import torch
    import torch.nn.functional as F

    ins = trigger_rng(seed, NAME).uniform(-1.0, 1.0, size=(1, 2, k, k))
    ins = ins / np.mean(np.abs(ins))
    up = F.interpolate(torch.from_numpy(ins), size=tuple(image_hw), mode="bicubic", align_corners=True)
    return up[0].permute(1, 2, 0).numpy().astype(np.float64)


def warp_grid(image_hw: tuple, flow: np.ndarray, s: float, grid_rescale: float) -> np.ndarray:
    """The (H, W, 2) sampling grid in grid_sample's normalised (x, y) coordinates."""
    h, w = image_hw
    gy, gx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    identity = np.stack([gx, gy], axis=-1)
    grid = (identity + s * flow / np.array([w, h], dtype=np.float64)) * grid_rescale
    return np.clip(grid, -1.0, 1.0)


def warp(images: np.ndarray, grids: np.ndarray) -> np.ndarray:
    """Bilinear resampling of uint8 (N, H, W, C) images at (1 or N, H, W, 2) grids, as uint8."""
    import torch
    import torch.nn.functional as F

    out = np.empty_like(images)
    for start in range(0, len(images), _CHUNK):
        batch = images[start : start + _CHUNK]
        grid = grids if len(grids) == 1 else grids[start : start + _CHUNK]
        x = torch.from_numpy(batch.astype(np.float32)).permute(0, 3, 1, 2)  # a copy: input may be read-only
        g = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32)).expand(len(batch), -1, -1, -1)
        with torch.no_grad():
            y = F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[start : start + len(batch)] = to_uint8(y.permute(0, 2, 3, 1).numpy())
    return out


@dataclass(frozen=True)
class WarpTrigger:
    """Warps every image with the fixed ``grid``; ``cross`` applies the paper's noise mode."""

    image_shape: tuple
    grid: np.ndarray  # (H, W, 2)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        check_batch(images, self.image_shape)
        return warp(images, self.grid[None])

    def cross(self, images: np.ndarray, seed: int) -> np.ndarray:
        """Noise-mode warp: the trigger grid plus per-image random noise in [-1, 1] / size."""
        check_batch(images, self.image_shape)
        h, w = self.image_shape[:2]
        noise = trigger_rng(seed, NAME + "-cross").uniform(-1.0, 1.0, size=(len(images), h, w, 2))
        grids = np.clip(self.grid[None] + noise / np.array([w, h], dtype=np.float64), -1.0, 1.0)
        return warp(images, grids)


def make_trigger(image_shape: tuple, *, seed: int = 0, **params: Any) -> WarpTrigger:
    """The WaNet trigger for (H, W, C) images (``cross_ratio`` is used by poison_dataset, not here)."""
    image_shape = tuple(int(v) for v in image_shape)
    p = resolve_params(image_shape, params)
    flow = flow_field(image_shape[:2], p["k"], seed)
    return WarpTrigger(image_shape, warp_grid(image_shape[:2], flow, p["s"], p["grid_rescale"]))
