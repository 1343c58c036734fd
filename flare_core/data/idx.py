"""MNIST-style IDX files: ``<prefix>-images-idx3-ubyte[.gz]`` with matching ``<prefix>-labels-idx1-ubyte[.gz]``."""
from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import numpy as np

from flare_core.dataset import ImageDataset
from flare_core.errors import DataError

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGES_RE = re.compile(r"^(?P<prefix>.*?)[-_.]?images[-_.]idx(?P<ndim>[34])[-_.]ubyte(?P<gz>\.gz)?$", re.IGNORECASE)
_SPLIT_WORDS = {"train": ("train",), "test": ("t10k", "test")}


def read_idx(path: Path) -> np.ndarray:
    """Parse one (optionally gzipped) IDX file holding unsigned bytes."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"Could not read the IDX file {path} ({exc}); it may be truncated or not gzip data.") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number).")
    if raw[2] != 0x08:
        raise DataError(f"{path} holds IDX type 0x{raw[2]:02x}; only unsigned-byte (0x08) IDX files are supported.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path} has a truncated IDX header.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(f"{path} should hold {expected} bytes of data for shape {shape} but holds {len(raw) - header}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def labels_file_for(images: Path) -> Path:
    """The labels file beside an images file (same prefix, ``labels-idx1-ubyte``, gzipped or not)."""
    m = IMAGES_RE.match(images.name)
    if m is None:
        raise DataError(f"{images.name} is not named like an IDX images file ('<prefix>-images-idx3-ubyte[.gz]').")
    name = images.name
    middle = re.sub("images", "labels", name[m.end("prefix"): m.start("ndim")], count=1, flags=re.IGNORECASE)
    ubyte_end = m.start("gz") if m["gz"] else len(name)
    stem = name[: m.end("prefix")] + middle + "1" + name[m.end("ndim"): ubyte_end]  # idx3/idx4 -> idx1
    for cand in (stem, stem + ".gz"):
        if (images.parent / cand).is_file():
            return images.parent / cand
    raise DataError(f"No labels file {stem}[.gz] matching {images.name} was found in {images.parent}.")


def find_images_file(folder: Path, split: str) -> Path:
    """The images file in ``folder`` for ``split`` ('train' or 'test'/'t10k')."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and IMAGES_RE.match(p.name))
    if not files:
        raise DataError(f"{folder} has no IDX images file ('<prefix>-images-idx3-ubyte[.gz]').")
    words = _SPLIT_WORDS.get(split.lower(), (split.lower(),))
    chosen = [p for p in files if any(w in IMAGES_RE.match(p.name)["prefix"].lower() for w in words)]
    if not chosen and len(files) == 1 and not any(
        w in IMAGES_RE.match(files[0].name)["prefix"].lower() for ws in _SPLIT_WORDS.values() for w in ws
    ):
        chosen = files
    if not chosen:
        raise DataError(f"{folder} has no IDX images file for split '{split}'; found {', '.join(p.name for p in files)}.")
    return min(chosen, key=lambda p: (p.name.lower().endswith(".gz"), p.name))  # prefer the uncompressed copy


def is_idx_path(path: Path) -> bool:
    if path.is_file():
        return IMAGES_RE.match(path.name) is not None
    return path.is_dir() and any(IMAGES_RE.match(p.name) for p in path.iterdir() if p.is_file())


def default_classes(path: Path, num: int) -> list:
    """Fashion-MNIST names when the path says 'fashion', else "0".."num-1"."""
    if "fashion" in str(path).lower() and num <= len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(k) for k in range(max(num, 10))]


def load_idx(path: str | Path, *, split: str = "train", classes: list | None = None) -> ImageDataset:
    """Load IDX images + labels from a folder (pick ``split``) or from the images file itself."""
    path = Path(path).absolute()
    images_path = path if path.is_file() else find_images_file(path, split)
    labels_path = labels_file_for(images_path)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"{images_path} has shape {images.shape}; expected (N, H, W) or (N, H, W, 1|3).")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path} holds {labels.size} labels but {images_path.name} holds {len(images)} images.")
    if len(labels) == 0:
        raise DataError(f"{images_path} holds no images.")
    labels = labels.astype(np.int64)
    classes = list(classes) if classes is not None else default_classes(images_path, int(labels.max()) + 1)
    sources = [f"{images_path}#{i}" for i in range(len(labels))]
    logger.info("Loaded %d IDX images from %s", len(labels), images_path)
    return ImageDataset(np.array(images), labels, classes, sources, format="idx", root=str(path))
