"""Atomic writes: a reader sees the old file/folder or the new one, never half of one.

The temporary file or folder is created with the permissions a plain write would give it (0666 / 0777 less the
umask), not ``tempfile``'s private 0600 / 0700: a run folder, a report or a purified dataset is written to be
read by the rest of the team.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np


def _fresh(parent: Path, prefix: str, suffix: str, make: Callable[[Path], None]) -> Path:
    """A new, unused name ``parent/<prefix><random><suffix>``, created by ``make`` (which must refuse an
    existing name with FileExistsError)."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary name in {parent}")


def new_temp_file(parent: Path, prefix: str, suffix: str) -> Path:
    """An empty new file in ``parent``, readable as a plain write's would be (0666 less the umask)."""
    return _fresh(parent, prefix, suffix,
                  lambda p: os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)))


def new_temp_dir(parent: Path, prefix: str, suffix: str) -> Path:
    """An empty new folder in ``parent`` (0777 less the umask)."""
    return _fresh(parent, prefix, suffix, lambda p: os.mkdir(p, 0o777))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (file) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_file(path.parent, f".{path.name}.", suffix or ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(array))


def check_replaceable(path: str | os.PathLike, *, overwrite: bool, marker: Optional[str] = None,
                      what: str = "output folder", error: Optional[type] = None, hint: str = "pass --overwrite") -> None:
    """Raise ``error`` (FlareError) unless a new folder may be written at ``path``: it is absent or empty, or
    ``overwrite`` is set and, when ``marker`` is given, ``path`` holds that file, i.e. is an earlier ``what``
    written by FLARE. A folder without it holds files FLARE did not write (a home folder, the folder the data
    or the model lives in), and replacing it would delete them, so ``--overwrite`` does not reach it."""
    if error is None:
        from flare_core.errors import FlareError as error
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise error(f"The output path {path} exists and is not a folder; choose another path.")
    if not (path.is_dir() and any(path.iterdir())):
        return
    if not overwrite:
        raise error(f"The output folder {path} already exists and is not empty; choose another or {hint}.")
    if marker is not None and not (path / marker).is_file():
        raise error(f"The output folder {path} is not an earlier {what} (it has no {marker}), and replacing it would "
                    f"delete files FLARE did not write; choose a new or empty folder.")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, marker: Optional[str] = None,
               what: str = "output folder") -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``.

    An existing non-empty ``path`` is replaced only with ``overwrite=True``, and where ``marker`` is given only
    when it holds that file (an earlier ``what``; see :func:`check_replaceable`). The old folder is removed after
    the new one is in place. On failure the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path).absolute()
    check_replaceable(path, overwrite=overwrite, marker=marker, what=what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_dir(path.parent, f".{path.name}.", ".partial")
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
