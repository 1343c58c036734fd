"""The whole pipeline at a large N: one ``flare purify`` run (``run_analysis``: load, feature pass, FLARE default,
trigger test, per-class views, export, run folder) over an N-sample Fashion-MNIST set, measured stage by stage.

The data set (made once, under ~/.cache/flare-data/scale-fmnist-badnets-<N>/): ceil(N / 60,000) copies of the
Fashion-MNIST training set, the first as it is and every other one shifted (each image by its own random offset of
up to 2 pixels, zero fill) with light Gaussian noise (sigma 6 grey levels), so no two samples are the same image;
then the lab's BadNets poisoning of the whole N (10 %, all-to-one, target 0, the default 3x3 checkerboard,
seed 0), exactly as the zoo's ``fmnist-badnets-10`` cell poisons its 60,000. It is written as an uncompressed
``.npz`` (``x``, ``y``, ``classes``; no ``sources``, as most users' arrays come) with its ground truth. The model is
the zoo's ``fmnist-badnets-10`` small CNN (trained on the 60,000, not on this set: its trigger is the same patch).

The run happens in a fresh process that samples its own anonymous memory (RssAnon) every 50 ms and keeps the peak
for each progress stage the pipeline reports (load, the feature pass, the subspace search, latent, views, export,
write...), above the process's start. ``--image-ram-mb`` sets ``FLARE_IMAGE_RAM_MB`` for the run (the limit past
which images and per-sample arrays live in memory-mapped files). Results: benchmarks/results/scale_run.json, one row
per run, with the commit it ran on.

    python3 -m benchmarks.scale_run --n 1000000 [--image-ram-mb MB] [--no-views] [--no-export] [--label TEXT]
        [--keep RUN_FOLDER]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import code_commit, machine, read_json, write_json  # noqa: E402
from benchmarks.image_loading import SYNTHETIC_ROOT, _status_kb  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "scale_run.json"
MODEL = REPO / "benchmarks" / "zoo" / "fmnist-badnets-10" / "model.pt"
MAX_SHIFT = 2
NOISE_SIGMA = 6.0


def shifted(images, rng):
    """Each image moved by its own offset of up to ``MAX_SHIFT`` pixels in each direction (zero fill)."""
    import numpy as np

    n, h, w = images.shape[:3]
    dy = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, n)
    dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, n)
    out = np.zeros_like(images)
    for a in range(-MAX_SHIFT, MAX_SHIFT + 1):
        for b in range(-MAX_SHIFT, MAX_SHIFT + 1):
            rows = np.flatnonzero((dy == a) & (dx == b))
            out[rows, max(a, 0):h + min(a, 0), max(b, 0):w + min(b, 0)] = \
                images[rows, max(-a, 0):h - max(a, 0), max(-b, 0):w - max(b, 0)]
    return out


def augmented_copy(images, copy: int, seed: int = 0):
    """Copy 0 is the images as they are; copy c > 0 is shifted and noised from its own seed."""
    import numpy as np

    if copy == 0:
        return images.copy()
    rng = np.random.default_rng([seed, copy])
    out = shifted(images, rng).astype(np.int16)
    out += np.rint(rng.normal(0.0, NOISE_SIGMA, out.shape)).astype(np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def make_dataset(n: int, seed: int = 0) -> Path:
    """The N-sample poisoned set (``train.npz``, ``ground_truth.json``), made once and reused."""
    import numpy as np

    from flare_core.attacks import poison_dataset
    from flare_core.data import load_dataset
    from flare_core.dataset import ImageDataset

    root = SYNTHETIC_ROOT / f"scale-fmnist-badnets-{n}"
    if (root / ".complete").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    base = load_dataset("builtin:fashion-mnist", split="train")
    m = len(base)
    x = np.empty((n,) + base.images.shape[1:], dtype=np.uint8)
    y = np.empty(n, dtype=np.int64)
    for start in range(0, n, m):
        rows = min(m, n - start)
        x[start:start + rows] = augmented_copy(base.images[:rows], start // m, seed)
        y[start:start + rows] = base.labels[:rows]
    clean = ImageDataset(x, y, list(base.classes), [""] * n)
    poisoned, truth = poison_dataset(clean, "badnets", rate=0.1, target=0, seed=seed)
    del clean, x
    tmp = root / "train.tmp.npz"
    np.savez(tmp, x=poisoned.images, y=poisoned.labels, classes=np.asarray(poisoned.classes))
    os.replace(tmp, root / "train.npz")
    (root / "ground_truth.json").write_text(json.dumps(truth.to_dict()))
    (root / ".complete").write_text(str(n))
    return root


def _dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def child(folder: str, views: bool, export: bool, keep: str = "") -> dict:
    """One run in this process; peak anonymous memory per progress stage, above the start. The run folder is
    deleted afterwards unless ``keep`` names where to write it."""
    from flare_core.pipeline import AnalysisConfig, run_analysis

    start_kb = _status_kb()["RssAnon"]
    stage = ["start"]
    peaks: dict = {}
    order: list = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            now, name = _status_kb()["RssAnon"], stage[0]
            if name not in peaks:
                order.append(name)
            peaks[name] = max(peaks.get(name, 0), now)
            time.sleep(0.05)

    def progress(name: str, done: int, total: int) -> None:
        stage[0] = name

    cfg = AnalysisConfig(model=str(MODEL), data=str(Path(folder) / "train.npz"), detector="flare", views=views,
                         ground_truth=str(Path(folder) / "ground_truth.json"))
    thread = threading.Thread(target=sample, daemon=True)
    scratch = Path(tempfile.mkdtemp(prefix="flare-scale-"))
    out = Path(keep).absolute() if keep else scratch / "run"
    try:
        thread.start()
        t0 = time.perf_counter()
        run = run_analysis(cfg, out, progress=progress, export=export)
        wall = time.perf_counter() - t0
        stop.set()
        thread.join()
        meta = run.meta
        ev = (meta.get("evaluation") or {}).get("flare") or {}
        record = {
            "wall_seconds": round(wall, 1),
            "timings": meta.get("timings", {}),
            "peak_anon_over_start_mb": {k: round((peaks[k] - start_kb) / 1024, 1) for k in order},
            "peak_rss_mb": meta.get("peak_rss_mb"),
            "start_anon_mb": round(start_kb / 1024, 1),
            "n_flagged": meta["result"]["n_flagged"],
            "flagged_per_class": meta["result"]["flagged_per_class"],
            "subspace": meta["result"]["subspace"],
            "tpr": ev.get("tpr"), "fpr": ev.get("fpr"), "f1": ev.get("f1"), "auroc": ev.get("auroc"),
            "detector_phases": ((meta["detector"]["report"] or {}).get("report") or {}).get("seconds"),
            "run_folder_mb": _dir_mb(out),
            "image_limit_env": os.environ.get("FLARE_IMAGE_RAM_MB"),
        }
        return record
    finally:
        stop.set()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000000)
    ap.add_argument("--image-ram-mb", type=int, default=None)
    ap.add_argument("--no-views", action="store_true")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--label", default="")
    ap.add_argument("--keep", default="", help="write the run folder here and keep it (to open it in the dashboard)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, not args.no_views, not args.no_export,
                                                    args.keep)), flush=True)
        return 0
    if args.n < 1000:
        ap.error("--n must be at least 1000")
    t0 = time.perf_counter()
    folder = make_dataset(args.n)
    made = time.perf_counter() - t0
    env = dict(os.environ)
    if args.image_ram_mb is not None:
        env["FLARE_IMAGE_RAM_MB"] = str(args.image_ram_mb)
    cmd = [sys.executable, "-m", "benchmarks.scale_run", "--child", str(folder)]
    cmd += ["--no-views"] * args.no_views + ["--no-export"] * args.no_export
    if args.keep:
        if Path(args.keep).exists():
            ap.error(f"--keep {args.keep} already exists; name a new folder")
        cmd += ["--keep", str(Path(args.keep).absolute())]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the run failed (exit {proc.returncode})")
    record = json.loads(lines[-1][len("RESULT "):])
    given = argv if argv is not None else sys.argv[1:]
    record.update(n=args.n, views=not args.no_views, export=not args.no_export, label=args.label,
                  data_mb=round((folder / "train.npz").stat().st_size / 2**20, 1),
                  dataset_made_seconds=round(made, 1), commit=code_commit(), machine=machine(),
                  load_average=os.getloadavg(), command="python3 -m benchmarks.scale_run " + shlex.join(given))
    print(json.dumps(record), flush=True)
    results = read_json(OUT, {"rows": []})
    results["rows"].append(record)
    write_json(OUT, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
