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

The workers are the processes of loky's reusable executor (``joblib.externals.loky``; joblib comes with
scikit-learn).  loky starts fresh interpreters, so nothing is forked (the thread pools of PyTorch and OpenMP
are not fork-safe), and, unlike ``multiprocessing``'s spawn and forkserver, it does not re-import the caller's
main script: a script needs no ``if __name__ == "__main__":`` guard, and the dashboard, whose main module
Streamlit replaces with the app script, starts no copy of the app.  Idle workers are kept
:data:`WORKER_IDLE_S` seconds, so a second search soon after (the dashboard's next run) does not pay their
start again.  A search that stops early starts no more tries; the ones already running (at most
``n_jobs - 1``) finish in their workers, unread: loky cannot kill a busy worker without leaving its semaphores
behind (the resource tracker then warns about them at exit).  Each new worker loads UMAP's compiled code
itself (about 10 s, even with a warm ``NUMBA_CACHE_DIR``), which is why ``'auto'`` uses workers only where the
first try's time says they will save at least :data:`AUTO_MIN_SAVING_S`.  The estimator's default is one
process, as in scikit-learn.
"""
from __future__ import annotations

import logging
import os
import pickle
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
#: Idle workers are kept this many seconds (loky's reusable executor), so the next search soon after does not
#: start them again.
WORKER_IDLE_S = 300


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


def ordered_map(fn: Callable[..., Any], tasks: Sequence[tuple], n_jobs: int,
                stats: Optional[dict[str, int]] = None) -> Iterator[Any]:
    """``fn(*task)`` for each task, yielded in the order of ``tasks``.  With ``n_jobs`` > 1 the next
    ``n_jobs`` tasks in line run in worker processes while the caller reads the results.  A caller that stops
    reading (``break``, or closing the generator) starts no more tasks; the ones already running finish in
    their workers and are dropped (killing them would leave their semaphores to the resource tracker, which
    warns about them at exit).  Where the workers cannot start, or one dies (killed for memory, say), the
    remaining tasks run in this process, with a warning: the answer is the same.  ``fn`` must be importable
    (module-level) and the tasks picklable.  A task's exception is raised here, at that task's turn.  ``stats``,
    where given, counts the ``tasks_sent`` to workers and their ``bytes_sent`` (the size of each task's pickle)."""
    stats = {} if stats is None else stats
    stats.setdefault("tasks_sent", 0)
    stats.setdefault("bytes_sent", 0)
    if n_jobs <= 1:
        for task in tasks:
            yield fn(*task)
        return
    from concurrent.futures import BrokenExecutor

    from joblib.externals.loky import get_reusable_executor

    n = min(n_jobs, len(tasks))
    futures: dict[int, Any] = {}

    def replies() -> Iterator[tuple[bool, Any]]:  # the workers' (ok, value), in order; the next task sent on resume
        executor = get_reusable_executor(max_workers=n, timeout=WORKER_IDLE_S)

        def submit(i: int) -> None:
            stats["bytes_sent"] += len(pickle.dumps((fn, tasks[i]), protocol=pickle.HIGHEST_PROTOCOL))
            stats["tasks_sent"] += 1
            futures[i] = executor.submit(_captured, fn, tasks[i])

        for i in range(n):
            submit(i)
        for i in range(len(tasks)):
            yield futures.pop(i).result()
            if i + n < len(tasks):  # the caller wants more: that worker takes the next task in line
                submit(i + n)

    done = 0
    it = replies()
    try:
        while True:
            try:
                ok, value = next(it)
            except StopIteration:
                return
            except (BrokenExecutor, OSError) as exc:  # from the pool, never from a task (those come back as values)
                logger.warning("subspace-search workers stopped or could not start (%s); trying the other %d "
                               "prefixes in this process", str(exc).splitlines()[0] if str(exc) else
                               type(exc).__name__, len(tasks) - done)
                for task in tasks[done:]:
                    yield fn(*task)
                return
            if not ok:
                raise value
            done += 1
            yield value
    finally:
        it.close()
        for future in futures.values():
            future.cancel()  # only a task not yet started can be cancelled; the running ones finish unread


def _captured(fn: Callable[..., Any], task: tuple) -> tuple[bool, Any]:
    """In a worker: ``(True, fn(*task))``, or ``(False, the exception)`` so that it is raised at the task's turn
    (joblib raises a worker's error as soon as it happens, which would stop a search on a speculative try
    past the prefix it keeps)."""
    try:
        return True, fn(*task)
    except Exception as exc:
        return False, exc


def describe(n_workers: int, n_jobs: Optional[Any], stats: Optional[dict[str, int]] = None,
             rows_sent: Optional[int] = None) -> dict[str, Any]:
    """What the run record keeps about where the search ran (and, where workers ran, what they were sent:
    ``rows_sent`` matrix rows a try, ``tries_sent`` tries and ``mb_sent`` MB in all)."""
    out: dict[str, Any] = {"n_jobs": n_jobs, "workers": int(n_workers)}
    if stats and stats.get("tasks_sent"):
        out.update(rows_sent=None if rows_sent is None else int(rows_sent), tries_sent=int(stats["tasks_sent"]),
                   mb_sent=round(stats["bytes_sent"] / 1e6, 2))
    return out
