"""The subspace search's execution backend: worker processes change the wall time, never the answer."""
import numpy as np
import pytest

from flare_core.detectors import FlareDetector, flare_detect
from flare_core.detectors import execution
from flare_core.errors import FlareError


def _square(x):
    return x * x


def _fail_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


@pytest.mark.parametrize("n_jobs", [1, 2, 3])
def test_ordered_map_yields_in_task_order(n_jobs):
    stats = {}
    assert list(execution.ordered_map(_square, [(i,) for i in range(7)], n_jobs, stats)) == [i * i for i in range(7)]
    assert stats["tasks_sent"] == (0 if n_jobs == 1 else 7)  # every task went to a worker, once
    assert (stats["bytes_sent"] > 0) == (n_jobs > 1)


def test_workers_do_not_import_the_callers_main_script(monkeypatch, tmp_path):
    # Streamlit (and AppTest) install the app script as __main__; multiprocessing's spawn and forkserver would
    # run it again in every worker.  loky's workers do not.
    import sys
    import types

    script = tmp_path / "app_like.py"
    script.write_text("raise SystemExit('the main script was run in a worker')\n")
    fake = types.ModuleType("__main__")
    fake.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", fake)
    assert list(execution.ordered_map(_square, [(i,) for i in range(4)], 2)) == [0, 1, 4, 9]


def _square_or_die_in_a_worker(x, parent_pid):
    import os

    if os.getpid() != parent_pid and x == 2:
        os._exit(3)  # as a worker killed for memory would
    return x * x


def test_a_worker_that_dies_leaves_its_tasks_to_this_process(caplog):
    import os

    tasks = [(i, os.getpid()) for i in range(6)]
    assert list(execution.ordered_map(_square_or_die_in_a_worker, tasks, 2)) == [i * i for i in range(6)]
    assert "workers stopped" in caplog.text and "in this process" in caplog.text


def _fail_on_three_or_sleep(x):
    import time

    if x == 3:
        raise ValueError("three")
    if x > 3:
        time.sleep(2)
    return x


def _sleep_then_square(x):
    import time

    time.sleep(0.1 if x == 0 else 2)
    return x * x


def test_ordered_map_stops_early_and_raises_a_workers_error_at_its_turn():
    import time

    results = execution.ordered_map(_fail_on_three, [(i,) for i in range(6)], 2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="three"):
        next(results)
    # task 0 is slow and task 1 fails at once: the error is still raised at task 1's turn, after task 0
    slow_first = execution.ordered_map(_fail_on_three_or_sleep, [(i,) for i in (4, 3, 5)], 2)
    assert next(slow_first) == 4
    with pytest.raises(ValueError, match="three"):
        next(slow_first)
    stats = {}
    early = execution.ordered_map(_sleep_then_square, [(i,) for i in range(50)], 2, stats)
    assert next(early) == 0
    start = time.perf_counter()
    early.close()  # returns at once; task 1, already running, finishes in its worker unread
    assert time.perf_counter() - start < 1.0
    assert stats["tasks_sent"] == 2  # no task was started after the caller stopped reading
    assert list(execution.ordered_map(_square, [(i,) for i in range(4)], 2)) == [0, 1, 4, 9]  # the pool still works


def _missing_file(x):
    raise FileNotFoundError(f"no file {x}")


def test_a_tasks_own_os_error_is_raised_not_taken_for_a_broken_pool(caplog):
    results = execution.ordered_map(_missing_file, [(i,) for i in range(3)], 2)
    with pytest.raises(FileNotFoundError, match="no file 0"):
        next(results)
    assert "in this process" not in caplog.text  # not re-run here as if the workers had stopped


def test_a_search_that_stops_in_a_worker_leaves_nothing_for_the_resource_tracker(tmp_path):
    # killing a busy loky worker leaks its semaphores, and the resource tracker warns about them when the
    # program exits: every `flare purify` whose search stopped early in a worker printed that warning
    import os
    import subprocess
    import sys

    script = tmp_path / "search.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_detectors_execution import _matrix\n"
        "from flare_core.detectors import flare_detect\n"
        "X, _ = _matrix(L=8, n_poison=30, shift=6.0, split_deep=3)\n"
        "r = flare_detect(X, random_state=0, n_jobs=2)\n"
        "print(r.subspace, r.report['search']['workers'])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    subspace, workers = map(int, out.stdout.split())
    # found after the first try, in a worker, with the next try still running in the other one (the third try
    # on the machines CI runs on, the second on others: UMAP's floating point differs between CPUs)
    assert subspace in (6, 7) and workers == 2
    assert "leaked" not in out.stderr, out.stderr[-2000:]


def test_resolve_n_jobs(monkeypatch):
    monkeypatch.setattr(execution, "usable_cpus", lambda: 8)
    assert execution.resolve_n_jobs(None, 18, 60.0) == 1
    assert execution.resolve_n_jobs(1, 18, 60.0) == 1
    assert execution.resolve_n_jobs(3, 18, 0.1) == 3  # a number given is used, however short the tries
    assert execution.resolve_n_jobs(16, 18, 60.0) == 8  # at most one per usable CPU
    assert execution.resolve_n_jobs(-1, 18, 60.0) == 8
    assert execution.resolve_n_jobs(-1, 5, 60.0) == 5  # at most one per try
    assert execution.resolve_n_jobs(4, 1, 60.0) == 1
    # 'auto': workers only where they save at least AUTO_MIN_SAVING_S, counting their start
    assert execution.resolve_n_jobs("auto", 18, 20.0) == execution.AUTO_MAX_WORKERS  # CIFAR-10, nothing found
    assert execution.resolve_n_jobs("auto", 3, 5.0) == 1  # Fashion-MNIST's small CNN: 4 prefixes in all
    assert execution.resolve_n_jobs("auto", 18, 1.0) == 1  # tries too short to pay for the start


def test_expected_saving():
    assert execution.expected_saving(18, 20.0, 1) == 0.0
    # 18 tries of 20 s: 360 s in one process; 4 workers take 5 rounds (100 s) plus their start
    assert execution.expected_saving(18, 20.0, 4) == pytest.approx(360.0 - 100.0 - execution.WORKER_START_S)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "many"])
def test_bad_n_jobs_is_refused_with_the_valid_values(bad):
    with pytest.raises(FlareError, match="n_jobs must be None or 1"):
        flare_detect(np.zeros((20, 3)), n_jobs=bad)


def _matrix(n=600, L=5, n_poison=0, shift=4.0, split_deep=0, seed=0):
    """Gaussian columns; ``n_poison`` rows shifted in the first two; ``split_deep`` deepest columns split every
    sample into two far halves (a structure that is not poison and hides it until those columns are dropped)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, L))
    poison = np.zeros(n, dtype=bool)
    if n_poison:
        poison[rng.choice(n, n_poison, replace=False)] = True
        X[poison, :2] -= shift
    if split_deep:
        X[:, -split_deep:] += 10 * (rng.random((n, 1)) < 0.5)
    return X, poison


def _same(a, b):
    return (all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("flagged", "scores", "clusters", "embedding"))
            and a.subspace == b.subspace and a.report["evidence"]["attempts"] == b.report["evidence"]["attempts"])


@pytest.fixture(scope="module")
def clean_runs():
    X, _ = _matrix()
    X_before = X.copy()
    return X, X_before, flare_detect(X, random_state=0), flare_detect(X, random_state=0, n_jobs=2)


def test_workers_give_the_one_process_answer_where_every_prefix_is_tried(clean_runs):
    X, X_before, one, two = clean_runs
    assert len(one.report["evidence"]["attempts"]) == X.shape[1] - 1  # L .. min_layers (2): all tried
    assert not one.flagged.any() and _same(one, two)
    assert np.array_equal(X, X_before)
    assert one.report["search"] == {"n_jobs": None, "workers": 1}  # the estimator's default
    assert two.report["search"]["workers"] == 2 and two.report["params"]["n_jobs"] == 2


def test_found_at_the_first_try_starts_no_worker():
    X, poison = _matrix(n_poison=30)
    det = FlareDetector(random_state=0, n_jobs=2).fit(X)
    assert det.subspace_ == X.shape[1] and len(det.report_["evidence"]["attempts"]) == 1
    assert (det.flagged_ & poison).sum() >= 28
    assert det.report_["search"]["workers"] == 1


def test_workers_stop_where_the_search_stops():
    X, poison = _matrix(L=8, n_poison=30, shift=6.0, split_deep=3)
    one = flare_detect(X, random_state=0)
    two = flare_detect(X, random_state=0, n_jobs=2)
    # found once the deepest split columns go: at the second or third try (UMAP's floating point differs between
    # CPUs; at prefix 5 no split is left)
    assert one.subspace in (6, 7) and len(one.report["evidence"]["attempts"]) == 8 - one.subspace + 1
    assert (one.flagged & poison).sum() == 30 and one.flagged.sum() == 30
    # the workers' speculative tries past the chosen prefix are not reported, and the answer is the same
    assert two.report["search"]["workers"] == 2 and _same(one, two)


def _arrays(obj):
    """Every numpy array inside nested tuples / lists."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [a for item in obj for a in _arrays(item)]
    return []


def test_workers_are_sent_only_the_rows_they_cluster_and_give_the_same_answer(monkeypatch):
    """Above ``sample_size`` a worker gets the clustered sample's rows (and their classes and positions), nothing
    of size N; the found prefix's other samples are placed in this process, so flags, clusters, embedding and
    records match one process."""
    from flare_core.detectors import execution

    X, poison = _matrix(L=8, n_poison=30, shift=6.0, split_deep=3)
    y = np.arange(len(X)) % 3
    sent = []
    real_map = execution.ordered_map

    def spying_map(fn, tasks, n_jobs, **kwargs):
        sent.extend(tasks)
        return real_map(fn, tasks, n_jobs, **kwargs)

    monkeypatch.setattr(execution, "ordered_map", spying_map)
    one = flare_detect(X, y, random_state=0, sample_size=300)
    two = flare_detect(X, y, random_state=0, sample_size=300, n_jobs=2)
    # found at the second try, which ran in a worker: its run came back unplaced and was placed here
    assert one.subspace == 7 and two.report["search"]["workers"] == 2 and _same(one, two)
    assert [task[0].shape for task in sent] == [(300, k) for k in range(7, 1, -1)]  # 100 of each class
    assert max(len(a) for task in sent for a in _arrays(task)) == 300  # the labels and positions too
    record = two.report["search"]
    assert record["rows_sent"] == 300 and 1 <= record["tries_sent"] <= 6 and 0 < record["mb_sent"] < 1
    ev = [u for u in two.report["evidence"]["units"] if "placed_by_neighbours" in u]
    assert ev and ev[0]["placed_by_neighbours"] == 300 and ev[0]["clustered_sample"] == 300
    assert len(two.flagged) == 600 and (two.flagged & poison).sum() == 30 == two.flagged.sum()


def test_the_app_runs_flare_with_auto_workers_and_auto_keeps_a_short_search_in_the_process(clean_runs):
    from flare_core.detectors.registry import DETECTORS

    for name in ("flare", "flare-faithful"):
        assert DETECTORS[name].factory().get_params()["n_jobs"] == "auto"
        assert DETECTORS[name].factory(n_jobs=1).get_params()["n_jobs"] == 1  # --param n_jobs=1 wins
    X, _, one, _ = clean_runs
    auto = flare_detect(X, random_state=0, n_jobs="auto")
    assert auto.report["search"]["workers"] == 1 and _same(one, auto)
