"""How a model wants its input: part of the loaded model's description, stored with every result."""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def shared_tensor(images: np.ndarray) -> torch.Tensor:
    """A tensor over the memory of ``images`` (C-order), read-only arrays too (images memory-mapped read-only from
    their source file): callers only read it, so torch's warning about a non-writable array does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(images))


@dataclass(frozen=True)
class Preprocessing:
    """uint8 (N,H,W,C) images -> float (N,C,H,W) tensors.

    Default (no description in the model file): pixels scaled to [0, 1], the dataset's own size and
    channel count, no normalisation. ``size`` is (H, W); ``channels`` 1 or 3 converts grayscale<->RGB.
    """

    size: Optional[tuple] = None
    channels: Optional[int] = None
    mean: Optional[tuple] = None
    std: Optional[tuple] = None

    def __call__(self, images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        return self.to_tensor(images, device)

    def to_tensor(self, images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """uint8 (N,H,W,C) images (a numpy array, or a uint8 tensor already on a device) -> float (N,C,H,W)."""
        if images.ndim == 3:
            images = images[..., None]
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8:
                raise ValueError(f"images must be uint8, got {images.dtype}.")
            x = images.to(device)
        else:
            x = shared_tensor(images).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if self.channels is not None and x.shape[1] != self.channels:
            if self.channels == 3 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            elif self.channels == 1 and x.shape[1] == 3:
                w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
                x = (x * w).sum(1, keepdim=True)
            else:
                raise ValueError(f"Cannot convert {x.shape[1]} channels to {self.channels}.")
        if self.size is not None and tuple(x.shape[2:]) != tuple(self.size):
            x = F.interpolate(x, size=tuple(self.size), mode="bilinear", align_corners=False, antialias=True)
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.std if self.std is not None else [1.0] * len(self.mean), device=x.device,
                               dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.contiguous()

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "Preprocessing":
        d = dict(d or {})
        return cls(
            size=tuple(d["size"]) if d.get("size") else None,
            channels=d.get("channels"),
            mean=tuple(d["mean"]) if d.get("mean") else None,
            std=tuple(d["std"]) if d.get("std") else None,
        )
