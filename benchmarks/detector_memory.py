"""Memory of the detectors that read the penultimate features, given them as the feature pass does: float32,
memory-mapped from a file (as past the limit on one array in memory).

Each case runs in a fresh process that samples its own RssAnon every 10 ms (``benchmarks.image_loading.PeakSampler``)
and reports the peak above its start, so a row says how much memory beyond the input a detector holds. The input is
synthetic: N samples of D non-negative features (ReLU-like) in 10 classes, 1 % of them (all in class 0, with a
low loss) moved off the rest, saved
once under ~/.cache/flare-data. Cases: the baselines (``ac``, ``ss``, ``spectre``) and FLARE default's readers of the
penultimate features that run over every class (``atypicality``: ``scoring.class_atypicality``; ``minority``:
``minority_mode.class_minority_modes``; ``latent``: ``latent.latent_detect`` with a per-sample loss) and the per-class
views (``views``: ``views.class_views``, with how well class 0's view keeps the moved 1 % as a cluster of its own;
``--classes 2`` makes classes of N/2 rows, past the views' embedded sample) and the preparation of FLARE default's
opt-in per-channel stage (``channels``: the features taken as a per-channel view, N x sum C, log-scaled and
robust-standardised; ``--d 4800`` is ResNet-18's channel count). Written to
benchmarks/results/detector_memory.json; each row carries the commit it ran on, so rows from before and after a change
sit side by side (run the *before* rows from a git worktree of the older commit).

    python3 -m benchmarks.detector_memory [--n 200000] [--d 512]
        [--cases ss,ac,spectre,atypicality,minority,latent,views,channels] [--classes 10] [--label TEXT]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import code_commit, read_json, write_json  # noqa: E402
from benchmarks.image_loading import SYNTHETIC_ROOT, PeakSampler, _status_kb  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "detector_memory.json"
CASES = ("ss", "ac", "spectre", "atypicality", "minority", "latent", "views", "channels")


def make_features(n: int, d: int, classes: int = 10, seed: int = 0) -> Path:
    """A folder with ``pooled.npy`` (N x D float32), ``y.npy`` and ``loss.npy``, made once and reused."""
    import numpy as np

    root = SYNTHETIC_ROOT / (f"features-{n}-{d}" + ("" if classes == 10 else f"-c{classes}"))
    if (root / ".complete").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(0, 2, (classes, d)).astype(np.float32)
    pooled = np.lib.format.open_memmap(root / "pooled.npy", mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, 65536):
        rows = slice(start, min(start + 65536, n))
        pooled[rows] = np.maximum(centres[y[rows]] + rng.normal(0, 1, (len(y[rows]), d)).astype(np.float32), 0)
    poison = np.flatnonzero(y == 0)[: max(1, n // 100)]
    pooled[poison, :8] += 6.0
    pooled.flush()
    del pooled
    loss = 1e-2 * np.exp(rng.normal(scale=0.5, size=n))
    loss[poison] = 1e-4
    np.save(root / "y.npy", y)
    np.save(root / "loss.npy", loss)
    (root / ".complete").write_text(str(n))
    return root


def child(folder: str, case: str) -> dict:
    import numpy as np

    P = np.load(Path(folder) / "pooled.npy", mmap_mode="r")
    y = np.load(Path(folder) / "y.npy")
    loss = np.load(Path(folder) / "loss.npy")
    record = {"baseline_rss_anon_mb": round(_status_kb()["RssAnon"] / 1024, 1)}
    with PeakSampler() as s:
        t0 = time.perf_counter()
        if case in ("ss", "ac", "spectre"):
            from flare_core.detectors import DETECTORS

            DETECTORS[case].factory().fit(P, y)
        elif case == "atypicality":
            from flare_core.detectors.scoring import class_atypicality

            class_atypicality(P, y)
        elif case == "minority":
            from flare_core.detectors.minority_mode import class_minority_modes

            class_minority_modes(P, y, random_state=0)
        elif case == "latent":
            from flare_core.detectors.latent import latent_detect

            latent_detect(P, y, loss)
        elif case == "channels":  # FLARE default's per-channel stage (opt-in): the features as a per-channel view
            from flare_core.detectors.flare import _channel_matrix

            _channel_matrix(P, np.arange(P.shape[1]) % 4, len(P), 4)
        elif case == "views":
            from flare_core.detectors.views import class_views

            views = class_views(P, y, random_state=0)
            record.update(_planted_cluster(views[0], np.flatnonzero(y == 0)[: max(1, len(y) // 100)]))
        record["seconds"] = round(time.perf_counter() - t0, 2)
    peak = s.peak_mb()
    record.update(peak_rss_anon_mb=peak["peak_rssanon_mb"],
                  peak_over_start_mb=round(peak["peak_rssanon_mb"] - record["baseline_rss_anon_mb"], 1),
                  input_mb=round(P.nbytes / 2**20, 1))
    return record


def _planted_cluster(view, planted) -> dict:
    """How class 0's view keeps the moved rows: the cluster holding most of them, its share of them (recall)
    and their share of it (precision), and how many of the class's rows the embedding was computed on."""
    import numpy as np

    member = np.isin(view.indices, planted)
    ids, counts = np.unique(view.clusters[member], return_counts=True)
    best = int(ids[np.argmax(counts)])
    in_best = view.clusters == best
    return {"view_class0_rows": int(len(view.indices)),
            "view_class0_embedded": int(getattr(view, "embedded", np.ones(len(view.indices), bool)).sum()),
            "planted_cluster": best, "planted_recall": round(float((in_best & member).sum() / member.sum()), 4),
            "planted_precision": round(float((in_best & member).sum() / max(1, in_best.sum())), 4)}


def run_case(folder: Path, case: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.detector_memory", "--child", str(folder), "--case", case],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{case}: the measuring process failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record.update(case=case, commit=code_commit(),
                  load_average=[round(x, 2) for x in os.getloadavg()])
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--label", default="")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.case)))
        return 0
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    folder = make_features(args.n, args.d, args.classes)
    results = read_json(OUT, {"rows": []})
    given = argv if argv is not None else sys.argv[1:]
    for case in cases:
        record = run_case(folder, case)
        record.update(n=args.n, d=args.d, classes=args.classes, label=args.label,
                      command="python3 -m benchmarks.detector_memory " + shlex.join(given))
        print(json.dumps(record), flush=True)
        results["rows"].append(record)
        write_json(OUT, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
