"""The in-memory dataset every part of flare_core works on."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from flare_core.errors import DataError


#: The largest class number a dataset's labels may name without class names (ImageNet-21k has 21,841 classes):
#: a label past it is a mistake (an id column read as the label, say), not a class list to build.
MAX_CLASS_NUMBER = 100_000


def numbered_class_names(top: int, where: str) -> list:
    """Class names "0".."top" for labels given as numbers; DataError past :data:`MAX_CLASS_NUMBER`."""
    if top > MAX_CLASS_NUMBER:
        raise DataError(f"{where} has a label of {top:,}; labels must be class numbers 0..K-1 "
                        f"(at most {MAX_CLASS_NUMBER:,}), or class names.")
    return [str(k) for k in range(top + 1)]


@dataclass
class ImageDataset:
    """Images with labels, and for every sample its stable index and original source.

    images:  (N, H, W, C) uint8 array, C is 1 (grayscale) or 3 (RGB).
    labels:  (N,) int64 array of class indices into ``classes``.
    classes: class names, ``classes[k]`` is the name of label k.
    sources: per-sample original source: a file path, or ``"<file>#<array index>"`` for array formats.
    format:  the input's layout: 'imagefolder', 'csv', 'cifar', 'idx', 'npz' (used to export in kind).
    root:    the path the dataset was loaded from.
    skipped: (source, reason) for every file that could not be read; never silently dropped.
    The stable index of a sample is its position 0..N-1 (loaders order deterministically).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list
    sources: list
    format: str = "npz"
    root: str = ""
    skipped: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be a (N, H, W, C) uint8 array, got shape {self.images.shape} dtype {self.images.dtype}."
            )
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.images) or len(self.sources) != len(self.images):
            raise ValueError("images, labels and sources must have the same length.")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple:
        """(H, W, C) of every image."""
        return tuple(self.images.shape[1:])

    @property
    def images_on_disk(self) -> bool:
        """True when the images are memory-mapped from disk (past ``FLARE_IMAGE_RAM_MB``: a temporary file of decoded
        images, or an uncompressed ``.npz`` itself, read-only), False for an array in memory."""
        return isinstance(self.images, np.memmap) and getattr(self.images, "_mmap", None) is not None

    @property
    def images_file(self) -> str | None:
        """The named file the images are mapped from (an ``.npz`` read in place), None for a temporary file or
        memory."""
        return getattr(self.images, "filename", None) if self.images_on_disk else None

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def _copy_rows(self, idx: np.ndarray) -> np.ndarray:
        """A copy of ``images[idx]``; from images on disk, again on disk when past ``FLARE_IMAGE_RAM_MB`` (copied a
        block at a time, so a large subset never passes through memory whole)."""
        if not self.images_on_disk:
            return self.images[idx]
        from flare_core.data.images import image_array

        out = image_array((len(idx), *self.images.shape[1:]))
        for start in range(0, len(idx), 4096):
            out[start:start + 4096] = self.images[idx[start:start + 4096]]
        return out

    def subset(self, indices: Sequence[int]) -> "ImageDataset":
        """A new dataset of the given samples, in the given order (sources kept)."""
        idx = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            images=self._copy_rows(idx),
            labels=self.labels[idx],
            sources=[self.sources[i] for i in idx],
            skipped=list(self.skipped),
        )
