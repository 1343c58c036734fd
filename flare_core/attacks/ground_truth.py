"""What a poisoning run changed: the ground truth a detector is scored against."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from flare_core.atomic import write_text
from flare_core.errors import DataError, FlareError

FORMAT = "flare-ground-truth"
VERSION = 1
_ARRAYS = ("poisoned_indices", "original_labels", "new_labels", "cross_indices")


def _int_array(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass
class GroundTruth:
    """The poisoned samples of a dataset and how they were made.

    poisoned_indices: sorted stable indices of the samples that carry the trigger *and* the attack's label
    (for clean-label SIG the label is unchanged). original_labels / new_labels are aligned with them.
    cross_indices: WaNet noise-mode samples (warped with noise, label kept); empty for other attacks.
    They are not counted as poisoned: they do not carry the backdoor.
    params: the attack's parameters with every default filled in. target is None for all-to-all.
    """

    poisoned_indices: np.ndarray
    original_labels: np.ndarray
    new_labels: np.ndarray
    attack: str
    params: dict
    mode: str
    target: Optional[int]
    rate: float
    seed: int
    n_total: int
    clean_label: bool = False
    cross_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    classes: list = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            setattr(self, name, _int_array(getattr(self, name)))
        n = len(self.poisoned_indices)
        if len(self.original_labels) != n or len(self.new_labels) != n:
            raise ValueError("poisoned_indices, original_labels and new_labels must have the same length.")
        for name in ("poisoned_indices", "cross_indices"):
            idx = getattr(self, name)
            if np.any(np.diff(idx) <= 0) or (len(idx) and (idx[0] < 0 or idx[-1] >= self.n_total)):
                raise ValueError(f"{name} must be sorted, unique and within 0..n_total-1.")

    @property
    def n_poisoned(self) -> int:
        return int(len(self.poisoned_indices))

    def mask(self, n: Optional[int] = None) -> np.ndarray:
        """(n,) bool array, True at the poisoned indices (n defaults to n_total)."""
        n = self.n_total if n is None else int(n)
        if self.n_poisoned and self.poisoned_indices[-1] >= n:
            raise FlareError(
                f"The ground truth marks index {int(self.poisoned_indices[-1])} as poisoned but the dataset has "
                f"only {n} samples; use the dataset the ground truth was made for."
            )
        out = np.zeros(n, dtype=bool)
        out[self.poisoned_indices] = True
        return out

    def to_dict(self) -> dict:
        """A JSON-ready dict (plain Python types)."""
        target_class = None
        if self.target is not None and 0 <= self.target < len(self.classes):
            target_class = self.classes[self.target]
        return {
            "format": FORMAT,
            "version": VERSION,
            "attack": self.attack,
            "mode": self.mode,
            "target": None if self.target is None else int(self.target),
            "target_class": target_class,
            "clean_label": bool(self.clean_label),
            "rate": float(self.rate),
            "seed": int(self.seed),
            "n_total": int(self.n_total),
            "n_poisoned": self.n_poisoned,
            "params": self.params,
            "classes": [str(c) for c in self.classes],
            **{name: getattr(self, name).tolist() for name in _ARRAYS},
        }

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the ground truth atomically as readable JSON: one key per line, lists on one line."""
        lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in self.to_dict().items()]
        write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")

    @classmethod
    def from_dict(cls, data: dict, source: str = "the ground truth") -> "GroundTruth":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{source} is not a FLARE ground-truth file; pass the JSON written when poisoning.")
        try:
            return cls(
                poisoned_indices=data["poisoned_indices"],
                original_labels=data["original_labels"],
                new_labels=data["new_labels"],
                attack=str(data["attack"]),
                params=dict(data["params"]),
                mode=str(data["mode"]),
                target=None if data["target"] is None else int(data["target"]),
                rate=float(data["rate"]),
                seed=int(data["seed"]),
                n_total=int(data["n_total"]),
                clean_label=bool(data.get("clean_label", False)),
                cross_indices=data.get("cross_indices", []),
                classes=list(data.get("classes", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{source} is incomplete or inconsistent ({exc}); re-create it by poisoning again."
            ) from exc

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "GroundTruth":
        """Read a file written by :meth:`to_json` (or the one in a lab folder given as ``path``); DataError if it
        is missing or not a ground-truth file."""
        from flare_core.data.lab import GROUND_TRUTH

        if Path(path).is_dir() and (Path(path) / GROUND_TRUTH).is_file():
            path = Path(path) / GROUND_TRUTH
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError as exc:
            raise DataError(f"The ground-truth file {path} does not exist; check the path.") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"The ground-truth file {path} is not readable JSON ({exc}); pass the file written when poisoning."
            ) from exc
        return cls.from_dict(data, source=f"The file {path}")
