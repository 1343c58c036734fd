"""Content hashes that identify a model file and a dataset in run records."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dataset_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """Hash of the decoded pixels and labels (independent of file layout)."""
    h = hashlib.sha256()
    h.update(str(images.shape).encode())
    step = 4096
    for i in range(0, len(images), step):
        h.update(np.ascontiguousarray(images[i : i + step]).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()
