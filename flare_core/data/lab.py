"""A backdoor-lab folder: what ``flare attack`` writes (and the demo ships).

``train.npz`` (or ``train/``, an ImageFolder, with ``--out-format imagefolder``), ``ground_truth.json``,
and, when a test set was given, ``test_clean.npz`` and ``test_poisoned.npz``. Pointed at such a folder, the
loaders read its training set (its clean test set for ``split="test"``), and the analysis takes its ground truth.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from flare_core.errors import DataError

GROUND_TRUTH = "ground_truth.json"
TRAIN_NPZ = "train.npz"
TRAIN_FOLDER = "train"
TEST_CLEAN = "test_clean.npz"
TEST_POISONED = "test_poisoned.npz"


def is_lab_folder(path: str | Path) -> bool:
    """True for a folder holding ``ground_truth.json`` beside ``train.npz`` or a ``train/`` folder."""
    p = Path(path).expanduser()
    return (p.is_dir() and (p / GROUND_TRUTH).is_file()
            and ((p / TRAIN_NPZ).is_file() or (p / TRAIN_FOLDER).is_dir()))


def lab_part(path: str | Path, split: str = "train") -> Path:
    """The file or folder of a lab folder to load for ``split``: the training set, or the clean test set."""
    p = Path(path).expanduser()
    if not is_lab_folder(p):
        raise DataError(f"{p} is not a backdoor-lab folder (flare attack's output: {GROUND_TRUTH} beside {TRAIN_NPZ} "
                        f"or {TRAIN_FOLDER}/); drop the lab format to have the format recognised.")
    if split == "train":
        return p / TRAIN_NPZ if (p / TRAIN_NPZ).is_file() else p / TRAIN_FOLDER
    if split == "test":
        if not (p / TEST_CLEAN).is_file():
            raise DataError(f"{p} holds no {TEST_CLEAN} (flare attack writes it when it is given a test set); "
                            "give a test set of your own.")
        return p / TEST_CLEAN
    raise DataError(f"A backdoor-lab folder has the splits 'train' and 'test', not '{split}'.")


def _lab_file(data: Optional[str | Path], part: str, name: str) -> Optional[str]:
    """``name`` in the lab folder that ``data`` is, or whose ``part`` (a file or folder name) ``data`` is."""
    if not data or str(data).lower().startswith("builtin:"):
        return None
    p = Path(data).expanduser()
    folder = p if is_lab_folder(p) else p.parent if p.name == part and is_lab_folder(p.parent) else None
    if folder is None:
        return None
    found = folder / name
    return str(found.absolute()) if found.is_file() else None


def lab_ground_truth(data: Optional[str | Path], split: str = "train") -> Optional[str]:
    """The ground truth of the lab folder given as the dataset (or of its ``train.npz`` / ``train/``), absolute;
    None for anything else. It describes the training set, so a test split gets none."""
    if split != "train" or not data:
        return None
    name = Path(str(data)).name
    return _lab_file(data, name if name in (TRAIN_NPZ, TRAIN_FOLDER) else TRAIN_NPZ, GROUND_TRUTH)


def lab_poisoned_test(test_data: Optional[str | Path]) -> Optional[str]:
    """The triggered test set (``test_poisoned.npz``, for the attack success rate) of the lab folder given as the
    test set (or of its ``test_clean.npz``), absolute; None for anything else."""
    return _lab_file(test_data, TEST_CLEAN, TEST_POISONED)
