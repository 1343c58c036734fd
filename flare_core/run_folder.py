"""The run folder: everything one analysis produced, reopened later without recomputing.

Layout (written atomically by :func:`write_run`; only ``decisions.json`` changes afterwards)::

    RUN/run.json          parameters, model/data description, chosen subspace, evidence, counts, timings,
                          versions, hashes
    RUN/manifest.csv      one row per sample: index,source,label,class_name,flagged,score,cluster
                          (+ flagged_<det>,score_<det> per extra detector, + poisoned when ground truth is known,
                          + loss,next_class when the model's logits were read: the cross-entropy of the
                          label and the class the model rates highest after it)
    RUN/features.npy      N x L abnormality matrix (the expensive pass), float32
    RUN/pooled.npy        N x D pooled penultimate features (when computed)
    RUN/embedding.npy     N x 2 global UMAP embedding of the detector
    RUN/views/class_<k>.npz   per-class view: indices, embedding (n,2), clusters (n,), cluster_ids, stability,
                              embedded (n,) (rows UMAP embedded; the rest placed by neighbours)
    RUN/decisions.json    the analyst's keep/remove overrides, saved on every change
    RUN/purified/         the kept samples in the input's own layout (after export)
"""
from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from flare_core.atomic import atomic_dir, write_json
from flare_core.errors import FlareError


def class_name(classes: list, label) -> str:
    """``classes[label]`` as text, or the label's number when ``classes`` does not name it."""
    k = int(label)
    return str(classes[k]) if 0 <= k < len(classes) else str(k)


MANIFEST_COLUMNS = ["index", "source", "label", "class_name", "flagged", "score", "cluster"]
DECISIONS = ("keep", "remove")


@dataclass
class ClassViewData:
    """A per-class 2-D view as stored in the run folder."""

    label: int
    indices: np.ndarray
    embedding: np.ndarray
    clusters: np.ndarray
    stability: dict
    #: True for the rows UMAP embedded, False for those placed by their nearest embedded rows; None in runs
    #: written before views were sampled (every row embedded).
    embedded: Optional[np.ndarray] = None

    def sampling_note(self) -> str:
        """'' when UMAP embedded every row, else a note for the plot (how many rows it embedded)."""
        if self.embedded is None or self.embedded.all():
            return ""
        return (f"UMAP on {int(self.embedded.sum()):,} of {len(self.embedded):,} samples, "
                f"the rest placed by their nearest neighbours")


def detector_report(run) -> dict:
    """The main detector's own report in a run's ``run.json`` (``{}`` when there is none); ``run`` is
    anything with a ``meta`` dict, a :class:`RunFolder` or a stand-in."""
    return ((run.meta.get("detector") or {}).get("report") or {}).get("report") or {}


class RunFolder:
    """Read access to a finished run, plus the analyst's decisions (the only thing that changes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "run.json").is_file() or not (self.path / "manifest.csv").is_file():
            raise FlareError(
                f"{self.path} is not a FLARE run folder (it needs run.json and manifest.csv); "
                "pick a folder written by `flare purify` or the dashboard."
            )
        try:
            self.meta: dict = json.loads((self.path / "run.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FlareError(f"{self.path / 'run.json'} is not valid JSON ({getattr(e, 'msg', e)}); "
                             "the run folder is damaged.") from e
        if not isinstance(self.meta, dict):
            raise FlareError(f"{self.path / 'run.json'} does not describe a run (it holds a "
                             f"{type(self.meta).__name__}); the run folder is damaged.")
        self._manifest: Optional[pd.DataFrame] = None
        _ = self.manifest  # read now: a damaged manifest is refused when the run is opened, not on some later page

    def _damaged(self, name: str, why: object) -> FlareError:
        return FlareError(f"{self.path / name} cannot be read ({why}); the run folder is damaged: "
                          "run the analysis again.")

    def _array(self, name: str, mmap: bool = False) -> np.ndarray:
        try:
            return np.load(self.path / name, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise self._damaged(name, e) from e

    # ---- contents -------------------------------------------------------------------------------------------
    @property
    def manifest(self) -> pd.DataFrame:
        if self._manifest is None:
            try:
                df = pd.read_csv(self.path / "manifest.csv", keep_default_na=False)
            except (OSError, ValueError, pd.errors.ParserError) as e:
                raise self._damaged("manifest.csv", e) from e
            missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
            if missing:
                raise FlareError(f"{self.path / 'manifest.csv'} lacks the columns {missing}; the run folder is damaged.")
            expected = (self.meta.get("dataset") or {}).get("n_samples")
            if expected is not None and len(df) != int(expected):
                raise self._damaged("manifest.csv", f"{len(df)} rows for the run's {int(expected)} samples")
            self._manifest = df
        return self._manifest

    @property
    def n_samples(self) -> int:
        return len(self.manifest)

    @property
    def classes(self) -> list:
        return list(self.meta.get("dataset", {}).get("classes", []))

    def class_name(self, label) -> str:
        """The name of class ``label`` (its number as text when the run does not name it)."""
        return class_name(self.classes, label)

    def features(self) -> np.ndarray:
        return self._array("features.npy", mmap=True)

    def pooled(self) -> Optional[np.ndarray]:
        return self._array("pooled.npy", mmap=True) if (self.path / "pooled.npy").exists() else None

    def embedding(self) -> Optional[np.ndarray]:
        return self._array("embedding.npy") if (self.path / "embedding.npy").exists() else None

    def class_labels_with_views(self) -> list:
        return sorted(int(p.stem.split("_", 1)[1]) for p in (self.path / "views").glob("class_*.npz"))

    def class_view(self, label: int) -> Optional[ClassViewData]:
        p = self.path / "views" / f"class_{int(label)}.npz"
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                stability = dict(zip(z["cluster_ids"].tolist(), z["stability"].tolist()))
                embedded = z["embedded"] if "embedded" in z.files else None
                return ClassViewData(int(label), z["indices"], z["embedding"], z["clusters"], stability, embedded)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise self._damaged(f"views/{p.name}", e) from e

    def detectors(self) -> list:
        """Names of the detectors whose results are in the manifest (the main one first)."""
        main = self.meta.get("detector", {}).get("name", "flare")
        extra = [c[len("flagged_"):] for c in self.manifest.columns if c.startswith("flagged_")]
        return [main] + [d for d in extra if d != main]

    def flagged(self, detector: Optional[str] = None) -> np.ndarray:
        df = self.manifest
        col = "flagged" if detector in (None, self.detectors()[0]) else f"flagged_{detector}"
        return df[col].to_numpy().astype(bool)

    def scores(self, detector: Optional[str] = None) -> np.ndarray:
        df = self.manifest
        col = "score" if detector in (None, self.detectors()[0]) else f"score_{detector}"
        return df[col].to_numpy().astype(float)

    def losses(self) -> Optional[np.ndarray]:
        """Per sample, the model's cross-entropy of its label (None for runs that did not read the logits)."""
        df = self.manifest
        return df["loss"].to_numpy().astype(float) if "loss" in df.columns else None

    def label_noise(self) -> Optional[np.ndarray]:
        """Per sample, whether a FLARE stage split it off and the label-noise rule left it unflagged as a
        mislabelled image (None for runs where the rule did not run)."""
        df = self.manifest
        return df["label_noise"].to_numpy().astype(bool) if "label_noise" in df.columns else None

    def next_classes(self) -> Optional[np.ndarray]:
        """Per sample, the class the model rates highest after the label (None when not recorded)."""
        df = self.manifest
        return df["next_class"].to_numpy().astype(np.int64) if "next_class" in df.columns else None

    def score_rule(self) -> Optional[str]:
        """How the main detector's scores rank the samples, as its report states it (None for detectors
        and older runs that do not say)."""
        rule = detector_report(self).get("score")
        return str(rule) if rule else None

    def flag_triggers(self) -> dict:
        """{class: record} of the test whether each class's flagged samples share a trigger (``moved_in``,
        ``moved_in_control``, ``n_flagged``, ...; :func:`flare_core.features.mode_trigger.flagged_group_triggers`);
        empty when it did not run."""
        rec = (self.meta.get("result") or {}).get("flag_triggers") or {}
        return {int(c): dict(r) for c, r in (rec.get("classes") or {}).items()}

    def trigger_differences(self) -> dict:
        """{class: float (H, W, C)} the flagged samples' mean image difference from the rest of their class
        (``triggers.npz``; empty when the test did not run)."""
        p = self.path / "triggers.npz"
        if not p.is_file():
            return {}
        with np.load(p, allow_pickle=False) as z:
            return {int(k[len("class_"):]): np.asarray(z[k]) for k in z.files if k.startswith("class_")}

    def ground_truth(self) -> Optional[np.ndarray]:
        df = self.manifest
        return df["poisoned"].to_numpy().astype(bool) if "poisoned" in df.columns else None

    # ---- the analyst's decisions ----------------------------------------------------------------------------
    def decisions(self) -> dict:
        """{index: 'keep' | 'remove'} overrides of the detector's flags (empty when none)."""
        p = self.path / "decisions.json"
        if not p.exists():
            return {}
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            return {int(k): v for k, v in data.get("decisions", {}).items() if v in DECISIONS}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError) as e:
            raise FlareError(f"{p} cannot be read ({e}); the analyst's decisions are in it, so it is left as it is: "
                             "repair or move it, then reopen the run.") from e

    def set_decisions(self, indices: Iterable[int], decision: Optional[str]) -> dict:
        """Mark samples 'keep' or 'remove' (None clears the override); saved atomically at once."""
        if decision is not None and decision not in DECISIONS:
            raise FlareError(f"A decision must be one of {DECISIONS} or None, not {decision!r}.")
        current = self.decisions()
        n = self.n_samples
        for i in indices:
            i = int(i)
            if not 0 <= i < n:
                raise FlareError(f"Sample index {i} is outside this run (0..{n - 1}).")
            if decision is None:
                current.pop(i, None)
            else:
                current[i] = decision
        write_json(
            self.path / "decisions.json",
            {"decisions": {str(k): v for k, v in sorted(current.items())}, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        )
        return current

    def removal_mask(self, detector: Optional[str] = None) -> np.ndarray:
        """True for samples to remove: the detector's flags, overridden by the analyst's decisions."""
        mask = self.flagged(detector).copy()
        for i, d in self.decisions().items():
            mask[i] = d == "remove"
        return mask


def write_run(
    path: str | Path,
    *,
    meta: Mapping,
    manifest: pd.DataFrame,
    features: Optional[np.ndarray] = None,
    pooled: Optional[np.ndarray] = None,
    embedding: Optional[np.ndarray] = None,
    views: Optional[Mapping[int, object]] = None,
    extra_files: Optional[Mapping[str, Path]] = None,
    overwrite: bool = False,
    before_commit: Optional[Callable[[Path], None]] = None,
) -> RunFolder:
    """Write a complete run folder atomically (temp folder renamed at the end) and open it.

    ``views`` maps class label -> an object with ``indices, embedding, clusters`` and ``cluster_stability``
    (dict id -> stability), and optionally ``embedded`` (which rows UMAP embedded). ``extra_files`` maps a
    name inside the run folder -> a file to move there (e.g. a features memmap written beside the output
    while it was computed). ``before_commit(tmp)`` runs
    last inside the temporary folder (e.g. to export the purified data) before ``run.json`` is written and
    the folder is renamed into place.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    with atomic_dir(path, overwrite=overwrite, marker="run.json", what="run folder") as tmp:
        manifest.to_csv(tmp / "manifest.csv", index=False)
        if features is not None:
            np.save(tmp / "features.npy", np.asarray(features, dtype=np.float32))
        if pooled is not None:
            np.save(tmp / "pooled.npy", np.asarray(pooled, dtype=np.float32))
        if embedding is not None:
            np.save(tmp / "embedding.npy", np.asarray(embedding, dtype=np.float32))
        for name, src in (extra_files or {}).items():
            Path(src).replace(tmp / name)
        if views:
            (tmp / "views").mkdir()
            for label, v in views.items():
                stab = dict(getattr(v, "cluster_stability", {}) or {})
                ids = np.array(sorted(stab), dtype=np.int64)
                np.savez(
                    tmp / "views" / f"class_{int(label)}.npz",
                    indices=np.asarray(v.indices, dtype=np.int64),
                    embedding=np.asarray(v.embedding, dtype=np.float32),
                    clusters=np.asarray(v.clusters, dtype=np.int64),
                    cluster_ids=ids,
                    stability=np.array([float(stab[i]) for i in ids], dtype=np.float64),
                    **({"embedded": np.asarray(v.embedded, dtype=bool)} if getattr(v, "embedded", None) is not None
                       else {}),
                )
        if before_commit is not None:
            before_commit(tmp)
        write_json(tmp / "run.json", dict(meta))
    return RunFolder(path)
