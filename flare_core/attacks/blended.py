"""Blended trigger (Chen et al., 2017): a full-image pattern mixed into the image with weight ``alpha``.

``x' = round((1 - alpha) * x + alpha * pattern)``. The pattern is uniform random noise (0..255 per pixel
and channel, from the seed) by default, or a user image resized to the dataset's image size.
Default ``alpha = 0.1``: the noise changes a pixel by about 7 grey levels on average (std of the
difference), hard to see yet learnable at typical poisoning rates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from flare_core.attacks._apply import blend, check_batch, trigger_rng
from flare_core.attacks._params import as_float, merge_params
from flare_core.errors import FlareError

NAME = "blended"
DEFAULTS: Mapping[str, Any] = {"alpha": 0.1, "image": None}
PARAM_HELP: Mapping[str, str] = {
    "alpha": "blend weight of the pattern in (0, 1]",
    "image": "path of an image to blend in (None: random noise from the seed); resized to the data's size",
}


def resolve_params(image_shape: tuple, params: Optional[Mapping[str, Any]] = None) -> dict:
    """All parameters with defaults filled in and validated (an image path is made absolute)."""
    p = merge_params(NAME, DEFAULTS, params)
    image = p["image"]
    if image is not None:
        if not isinstance(image, (str, os.PathLike)) or not os.path.isfile(image):
            raise FlareError(f"The blend image {image!r} does not exist; pass the path of an image file.")
        image = os.path.abspath(os.fspath(image))
    return {"alpha": as_float(NAME, "alpha", p["alpha"], 0.0, 1.0, lo_open=True), "image": image}


def load_pattern_image(path: str, image_shape: tuple) -> np.ndarray:
    """The image at ``path`` as an (H, W, C) uint8 array of ``image_shape`` (read only, never modified)."""
    from PIL import Image, UnidentifiedImageError

    h, w, c = image_shape
    if c not in (1, 3):
        raise FlareError(f"A blend image can only be used with 1- or 3-channel data, not {c} channels.")
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise FlareError(f"The blend image {path} could not be read ({exc}); pass a PNG or JPEG file.") from exc
    return arr.reshape(h, w, c).copy()


def noise_pattern(image_shape: tuple, seed: int) -> np.ndarray:
    """Uniform random (H, W, C) uint8 noise, the same for the same seed."""
    return trigger_rng(seed, NAME).integers(0, 256, size=tuple(image_shape), dtype=np.uint8)


@dataclass(frozen=True)
class BlendTrigger:
    """Blends the full-image ``pattern`` into every image with weight ``alpha``."""

    image_shape: tuple
    pattern: np.ndarray
    alpha: float

    def __call__(self, images: np.ndarray) -> np.ndarray:
        check_batch(images, self.image_shape)
        return blend(images, self.pattern, self.alpha)


def make_trigger(image_shape: tuple, *, seed: int = 0, **params: Any) -> BlendTrigger:
    """The Blended trigger for (H, W, C) images."""
    image_shape = tuple(int(v) for v in image_shape)
    p = resolve_params(image_shape, params)
    if p["image"] is None:
        pattern = noise_pattern(image_shape, seed)
    else:
        pattern = load_pattern_image(p["image"], image_shape)
    return BlendTrigger(image_shape, pattern, p["alpha"])
