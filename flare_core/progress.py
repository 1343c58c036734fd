"""Progress reporting shared by the CLI (tqdm) and the dashboard (st.progress).

A progress callback is any callable ``progress(stage, done, total)``; ``total`` may be 0 when unknown.
"""
from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Callable[[str, int, int], None]


def null_progress(stage: str, done: int, total: int) -> None:
    """A progress callback that does nothing."""


def ensure_progress(progress: Optional[ProgressCallback]) -> ProgressCallback:
    return progress if progress is not None else null_progress
