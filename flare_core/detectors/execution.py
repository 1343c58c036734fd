"""Where the subspace search runs: in this process, or speculatively in a pool of worker processes.

FLARE's adaptive subspace selection tries the column prefixes L, L-1, ... in order and stops at the first
that finds a separated group.  Each try is a UMAP + HDBSCAN run that depends only on its prefix, so the
tries can run side by side: with ``n_jobs`` workers, the next ``n_jobs`` prefixes in line are always
running, their results are read back in the search's own order, and the search stops where the one-process
search would have stopped.  The answer is the same whatever ``n_jobs`` is (each try is deterministic given
``random_state``); only the wall time changes.  Where nothing is found (a clean dataset, the slowest case:
CIFAR-10 tries 17-19 prefixes) the search costs about ``ceil(tries / n_jobs)`` tries' time.  The first try
always runs in this process: most poisoned sets are found there, and then no worker is started at all.

This is the project's execution backend for the search: :func:`ordered_map` is all the search asks of it,
so a backend that sends the tries to other machines would implement the same function.

Each worker is a fresh ``python3 -m flare_core.detectors.search_worker`` process (:mod:`.search_worker`) that
reads pickled tasks on its stdin and writes their pickled results on its stdout.  So nothing is forked (the
thread pools of PyTorch and OpenMP are not fork-safe), and, unlike ``multiprocessing``'s spawn and forkserver,
nothing re-imports the caller's main script: a script needs no ``if __name__ == "__main__":`` guard, and the
dashboard, whose main module Streamlit replaces with the app script, starts no copy of the app.  The pickles
only ever travel between this process and workers it started itself.  Each worker loads UMAP's compiled code
itself (about 10 s, even with a warm ``NUMBA_CACHE_DIR``), which is why ``'auto'`` uses workers only where the
first try's time says they will save at least :data:`AUTO_MIN_SAVING_S`.  The estimator's default is one
process, as in scikit-learn.
"""
from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

from flare_core.errors import FlareError

logger = logging.getLogger(__name__)

#: ``n_jobs='auto'`` uses at most this many workers (each holds its own copy of the matrix and a UMAP run: a
#: few hundred MB at 20,000 clustered rows) ...
AUTO_MAX_WORKERS = 4
#: ... and only where, judged by the first try's time, they would save at least ``AUTO_MIN_SAVING_S`` seconds
#: counting ``WORKER_START_S`` to start them (each loads UMAP's compiled code itself: about 10 s measured).
AUTO_MIN_SAVING_S = 30.0
WORKER_START_S = 15.0


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_n_jobs(n_jobs: Any, n_tasks: int, task_seconds: float) -> int:
    """Workers for ``n_tasks`` more tries, each expected to take ``task_seconds``: ``None`` or 1 = this
    process; a positive int = that many (at most one per try and per usable CPU); -1 = one per usable CPU;
    ``'auto'`` = up to :data:`AUTO_MAX_WORKERS`, where that saves at least :data:`AUTO_MIN_SAVING_S` seconds
    (:func:`expected_saving`), else 1."""
    check_n_jobs(n_jobs)
    if n_jobs is None or n_jobs == 1 or n_tasks <= 1:
        return 1
    wanted = {"auto": AUTO_MAX_WORKERS, -1: usable_cpus()}.get(n_jobs, n_jobs)
    workers = max(1, min(int(wanted), usable_cpus(), n_tasks))
    if n_jobs == "auto" and expected_saving(n_tasks, task_seconds, workers) < AUTO_MIN_SAVING_S:
        return 1
    return workers


def expected_saving(n_tasks: int, task_seconds: float, workers: int) -> float:
    """Seconds ``workers`` processes would save on ``n_tasks`` tries of ``task_seconds`` each, all tried
    (nothing found: the slowest case), counting :data:`WORKER_START_S` to start them."""
    if workers <= 1:
        return 0.0
    rounds = -(-n_tasks // workers)
    return n_tasks * task_seconds - (WORKER_START_S + rounds * task_seconds)


def check_n_jobs(n_jobs: Any) -> None:
    """Raise a :class:`FlareError` naming the valid values unless ``n_jobs`` is None, 'auto', -1 or >= 1."""
    if n_jobs is None or n_jobs == "auto":
        return
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or not (n_jobs == -1 or n_jobs >= 1):
        raise FlareError(f"n_jobs must be None or 1 (this process), a number of worker processes >= 2, -1 (one per "
                         f"CPU) or 'auto', got {n_jobs!r}.")


class _Worker:
    """One ``search_worker`` process: :meth:`send` a task, :meth:`receive` its result (in the order sent)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the same flare_core
        self.proc = subprocess.Popen([sys.executable, "-m", "flare_core.detectors.search_worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def send(self, fn: Callable[..., Any], task: tuple) -> int:
        """Send ``fn(*task)`` to the worker; the bytes sent."""
        data = pickle.dumps((fn, task), protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        return len(data)

    def receive(self) -> Any:
        try:
            ok, value = pickle.load(self.proc.stdout)
        except EOFError:
            code = self.proc.wait()
            raise RuntimeError(f"a subspace-search worker stopped unexpectedly (exit code {code}); run with "
                               f"n_jobs=1 to see the error in this process.") from None
        if ok:
            return value
        raise value

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def ordered_map(fn: Callable[..., Any], tasks: Sequence[tuple], n_jobs: int,
                stats: Optional[dict[str, int]] = None) -> Iterator[Any]:
    """``fn(*task)`` for each task, yielded in the order of ``tasks``.  With ``n_jobs`` > 1 the next
    ``n_jobs`` tasks in line run in worker processes (task i on worker i mod n_jobs) while the caller reads
    the results; a caller that stops reading (``break``, or closing the generator) stops the workers at once.
    Where no worker can be started, the tasks run in this process (with a warning).
    ``fn`` must be a module-level function and the tasks picklable.  A worker's exception is raised here, at
    that task's turn.  ``stats``, where given, counts the ``tasks_sent`` to workers and their ``bytes_sent``."""
    stats = {} if stats is None else stats
    stats.setdefault("tasks_sent", 0)
    stats.setdefault("bytes_sent", 0)

    def send(worker: _Worker, task: tuple) -> None:
        stats["bytes_sent"] += worker.send(fn, task)
        stats["tasks_sent"] += 1

    if n_jobs <= 1:
        for task in tasks:
            yield fn(*task)
        return
    workers: list[_Worker] = []
    try:
        for _ in range(min(n_jobs, len(tasks))):
            workers.append(_Worker())
    except OSError as exc:  # no interpreter to start (an embedded Python): the same answer, in this process
        logger.warning("could not start a subspace-search worker (%s); trying the prefixes in this process", exc)
        for worker in workers:
            worker.close()
        for task in tasks:
            yield fn(*task)
        return
    n = len(workers)
    try:
        for i, task in enumerate(tasks[:n]):
            send(workers[i], task)
        for i in range(len(tasks)):
            result = workers[i % n].receive()
            if i + n < len(tasks):  # that worker is idle now: give it the next task in line
                send(workers[i % n], tasks[i + n])
            yield result
    finally:
        for worker in workers:
            worker.close()


def describe(n_workers: int, n_jobs: Optional[Any], stats: Optional[dict[str, int]] = None,
             rows_sent: Optional[int] = None) -> dict[str, Any]:
    """What the run record keeps about where the search ran (and, where workers ran, what they were sent:
    ``rows_sent`` matrix rows a try, ``tries_sent`` tries and ``mb_sent`` MB in all)."""
    out: dict[str, Any] = {"n_jobs": n_jobs, "workers": int(n_workers)}
    if stats and stats.get("tasks_sent"):
        out.update(rows_sent=None if rows_sent is None else int(rows_sent), tries_sent=int(stats["tasks_sent"]),
                   mb_sent=round(stats["bytes_sent"] / 1e6, 2))
    return out
