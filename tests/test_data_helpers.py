"""Tiny on-disk datasets for the data loader/writer tests (written into tmp_path by the tests)."""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, arr: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def make_imagefolder(root: Path, classes=("cat", "dog"), per_class=3, size=(8, 8), gray=False, seed=0) -> dict:
    """root/<class>/img_<i>.png with random pixels; returns {path: array} as written."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in classes:
        for i in range(per_class):
            shape = size if gray else (*size, 3)
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            p = root / c / f"img_{i}.png"
            write_image(p, arr)
            written[p] = arr
    return written


def tree_hashes(root: Path) -> dict:
    """{relative path: sha256} of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    data = header + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)


class Py2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), like the original CIFAR 'python version' files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    """Protocol-2 pickle with Python 2 strings and numpy 1.x module names, as in the real CIFAR files."""
    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def make_cifar10(folder: Path, per_batch=4, train_batches=5, seed=0) -> dict:
    """A CIFAR-10 python-version folder with tiny batches; returns {file name: (data, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, train_batches + 1)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        (folder / name).write_bytes(py2_pickle({b"batch_label": name.encode(), b"labels": labels, b"data": data}))
        out[name] = (data, labels)
    names10 = [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]]
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": names10, b"num_vis": 3072}))
    return out
