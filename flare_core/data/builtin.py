"""Built-in datasets that need no download: Fashion-MNIST (Debian package) and scikit-learn digits."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from flare_core.data.idx import FASHION_MNIST_CLASSES, load_idx
from flare_core.dataset import ImageDataset
from flare_core.errors import DataError

logger = logging.getLogger(__name__)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
BUILTIN_PREFIX = "builtin:"
BUILTINS = ("fashion-mnist", "digits")
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fashion_mnist_available(root: str | Path = FASHION_MNIST_ROOT) -> bool:
    """True when all four Fashion-MNIST IDX files (gzipped or not) are in ``root``."""
    root = Path(root)
    return all((root / f).is_file() or (root / f"{f}.gz").is_file() for f in _FASHION_FILES)


def load_fashion_mnist(split: str = "train", root: str | Path = FASHION_MNIST_ROOT) -> ImageDataset:
    """Fashion-MNIST 'train' (60000) or 'test' (10000) 28x28 grayscale images with the 10 standard names."""
    if split not in ("train", "test"):
        raise DataError(f"Unknown Fashion-MNIST split '{split}'; use 'train' or 'test'.")
    if not fashion_mnist_available(root):
        raise DataError(
            f"Fashion-MNIST was not found in {root}; install it with 'sudo apt-get install dataset-fashion-mnist' "
            "or pass the folder that holds its IDX files."
        )
    return load_idx(root, split=split, classes=FASHION_MNIST_CLASSES)


def digits_images() -> tuple:
    """All 1797 scikit-learn digits as (N, 16, 16, 1) uint8 (0..16 scaled to 0..255, nearest-neighbour 2x) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    x = x.repeat(2, axis=1).repeat(2, axis=2)[..., None]
    return x, d.target.astype(np.int64)


def digits_split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of the deterministic stratified 80/20 split (seed 0); 'all' gives every index."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if split == "all":
        return idx
    if split not in ("train", "test"):
        raise DataError(f"Unknown digits split '{split}'; use 'train', 'test' or 'all'.")
    train, test = train_test_split(idx, test_size=0.2, stratify=labels, random_state=0)
    return np.sort(train if split == "train" else test)


def load_digits_dataset(split: str = "train") -> ImageDataset:
    """The scikit-learn 8x8 digits upscaled to 16x16 grayscale, split 80/20 stratified (seed 0)."""
    x, y = digits_images()
    idx = digits_split_indices(y, split)
    sources = [f"builtin:digits#{i}" for i in idx]
    return ImageDataset(
        x[idx], y[idx], [str(k) for k in range(10)], sources, format="builtin", root="builtin:digits"
    )


def load_builtin(spec: str, split: str = "train") -> ImageDataset:
    """Load ``builtin:fashion-mnist`` or ``builtin:digits``."""
    name = spec[len(BUILTIN_PREFIX):].strip().lower() if spec.lower().startswith(BUILTIN_PREFIX) else spec.lower()
    if name in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return load_fashion_mnist(split)
    if name == "digits":
        return load_digits_dataset(split)
    raise DataError(f"Unknown built-in dataset '{spec}'; use one of: {', '.join(BUILTIN_PREFIX + b for b in BUILTINS)}.")
