"""The subspace search run in this process and in worker processes: same answer, wall time of each.

FLARE's layer stage (the abnormality matrix of a cached model, UMAP + HDBSCAN over the column prefixes; the
other stages are not run) with ``n_jobs=1`` and then with each ``--jobs`` value, on the same cached matrix.
It checks that the flags, scores, clusters, embedding, chosen subspace and the record of every try are
identical, and records the wall time of each.  The worst case for a user is a dataset where nothing is found:
every prefix is tried (CIFAR-10's 20 BN layers: 17-19 tries).

    python3 -m benchmarks.search_parallel cifar-clean-e12 --jobs 2,auto
    -> benchmarks/results/search_parallel.json (one entry per model, merged)

``--payload N[,N...]`` measures instead what one worker try is sent (its pickle) at N samples of a synthetic
20-column matrix with 10 classes: the clustered rows the search sends, against what session 25's search sent
(the whole prefix, every label and sample index).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import CACHE, RESULTS, machine, write_json


def measure(model: str, jobs: list) -> dict:
    from flare_core.detectors import flare_detect

    X = np.load(CACHE / model / "abnormality.npy")
    y = np.load(CACHE / model / "train.npz")["y"]
    runs = {}
    reference = None
    for n_jobs in [1] + [j for j in jobs if j != 1]:
        t0 = time.perf_counter()
        r = flare_detect(X, y, random_state=0, n_jobs=n_jobs)
        wall = time.perf_counter() - t0
        same = None
        if reference is None:
            reference = r
        else:
            same = bool(all(np.array_equal(getattr(r, a), getattr(reference, a))
                            for a in ("flagged", "scores", "clusters", "embedding"))
                        and r.subspace == reference.subspace
                        and r.report["evidence"]["attempts"] == reference.report["evidence"]["attempts"])
        search = r.report["search"]
        runs[str(n_jobs)] = {"wall_s": round(wall, 1), "workers": search["workers"],
                             "rows_sent": search.get("rows_sent"), "tries_sent": search.get("tries_sent"),
                             "mb_sent": search.get("mb_sent"),
                             "tries": len(r.report["evidence"]["attempts"]), "subspace": int(r.subspace),
                             "n_flagged": int(r.flagged.sum()), "umap_s_summed": r.report["seconds"].get("umap"),
                             "identical_to_one_process": same}
        print(model, f"n_jobs={n_jobs}", json.dumps(runs[str(n_jobs)]), flush=True)
    base = runs["1"]["wall_s"]
    for entry in runs.values():
        entry["speedup"] = round(base / entry["wall_s"], 2)
    return {"n": int(len(y)), "columns": int(X.shape[1]), "runs": runs}


def payload(n: int, columns: int = 20, classes: int = 10) -> dict:
    """Pickled bytes of one worker try (the second prefix) at ``n`` samples: as the search sends it (the
    clustered rows, their classes and positions) and as session 25's search did (the whole prefix, every
    label, every sample index of the unit)."""
    import pickle

    from flare_core.detectors import flare as F

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(n, columns))
    y = rng.integers(0, classes, n)
    p = F.resolve_params({})
    units = F._plan_units(n, y, p)
    rows = np.unique(np.concatenate([u.rows for u in units]))
    jobs = [(u.label, len(u.index), np.searchsorted(rows, u.rows)) for u in units]
    k = columns - 1
    tasks = {"sent": (Z[rows][:, :k], y[rows], jobs, n, p, False),
             "before": (Z[:, :k], [(u.label, u.index) for u in units], n, p, y, False)}
    sizes = {name: len(pickle.dumps((F._try_prefix, task), protocol=pickle.HIGHEST_PROTOCOL))
             for name, task in tasks.items()}
    return {"n": n, "columns_sent": k, "clustered_rows": int(len(rows)), "mb_sent": round(sizes["sent"] / 1e6, 1),
            "mb_before": round(sizes["before"] / 1e6, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="cached models (benchmarks/cache/NAME/abnormality.npy)")
    ap.add_argument("--jobs", default="2,auto", help="comma-separated n_jobs values to compare with 1 (default 2,auto)")
    ap.add_argument("--payload", default=None, help="comma-separated sample counts: measure one worker try's size")
    args = ap.parse_args(argv)
    if args.payload:
        out = RESULTS / "search_parallel.json"
        data = json.loads(out.read_text()) if out.exists() else {"models": {}}
        data["payload"] = {"rows": [payload(int(n)) for n in args.payload.split(",")],
                           "command": f"python3 -m benchmarks.search_parallel --payload {args.payload}"}
        print(json.dumps(data["payload"], indent=1))
        write_json(out, data)
        return
    jobs = [j if j == "auto" else int(j) for j in args.jobs.split(",")]
    out = RESULTS / "search_parallel.json"
    data = json.loads(out.read_text()) if out.exists() else {"models": {}}
    for model in args.models:
        data["models"][model] = {**measure(model, jobs), "machine": machine(),
                                 "command": f"python3 -m benchmarks.search_parallel {model} --jobs {args.jobs}"}
        write_json(out, data)


if __name__ == "__main__":
    main()
