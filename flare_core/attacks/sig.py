"""SIG trigger (Barni, Kallas & Tondi, ICIP 2019): a horizontal sinusoid added to the image.

``v(i, j) = delta * sin(2 * pi * j * f / W)`` for column j of a W-wide image, added to every row and
channel, then rounded and clipped to 0..255. SIG is a CLEAN-LABEL attack: only images that already
belong to the target class are poisoned and their labels are not changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from flare_core.attacks._apply import check_batch, to_uint8
from flare_core.attacks._params import as_float, merge_params

NAME = "sig"
DEFAULTS: Mapping[str, Any] = {"delta": 20.0, "frequency": 6.0}
PARAM_HELP: Mapping[str, str] = {
    "delta": "amplitude of the sinusoid in grey levels (0, 255]",
    "frequency": "number of periods across the image width (f), in (0, W/2]",
}


def resolve_params(image_shape: tuple, params: Optional[Mapping[str, Any]] = None) -> dict:
    """All parameters with defaults filled in and validated for ``image_shape`` (H, W, C)."""
    p = merge_params(NAME, DEFAULTS, params)
    return {
        "delta": as_float(NAME, "delta", p["delta"], 0.0, 255.0, lo_open=True),
        "frequency": as_float(NAME, "frequency", p["frequency"], 0.0, image_shape[1] / 2, lo_open=True),
    }


def signal(width: int, delta: float, frequency: float) -> np.ndarray:
    """The (W,) horizontal signal ``delta * sin(2 pi j f / W)``."""
    j = np.arange(width, dtype=np.float64)
    return delta * np.sin(2.0 * np.pi * j * frequency / width)


@dataclass(frozen=True)
class SignalTrigger:
    """Adds a fixed (H, W, C)-broadcastable ``pattern`` to every image, rounded and clipped."""

    image_shape: tuple
    pattern: np.ndarray

    def __call__(self, images: np.ndarray) -> np.ndarray:
        check_batch(images, self.image_shape)
        return to_uint8(images.astype(np.float32) + self.pattern)


def make_trigger(image_shape: tuple, *, seed: int = 0, **params: Any) -> SignalTrigger:
    """The SIG trigger for (H, W, C) images (``seed`` is unused: the signal is fixed)."""
    image_shape = tuple(int(v) for v in image_shape)
    p = resolve_params(image_shape, params)
    pattern = signal(image_shape[1], p["delta"], p["frequency"]).astype(np.float32)[None, None, :, None]
    return SignalTrigger(image_shape, pattern)
