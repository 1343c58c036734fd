"""Speed, memory and growth of each stage, plus the feature-pass overhead, numba cold start and a profile.

Every measurement runs in a fresh subprocess (``--worker``) so its peak memory (``ru_maxrss`` of that
process: imports + data + the stage) is its own; the worker also reports the resident size just before
the stage, so the stage's own growth is ``peak - before``.

Stages (the product's own functions, as ``flare purify`` calls them):
  forward   plain forward pass over the data (``predict_logits``): the physical floor for 'features'
  features  FLARE's abnormality feature pass (``extract_abnormality_features``)
  latent-features  the penultimate features + logits FLARE default's latent stage reads, as a pass of
            their own (``extract_latent_features``; how ``flare purify`` took them until it took both in one)
  features+latent  both in one forward pass (``extract_abnormality_features(latent=True)``), as
            ``flare purify`` runs FLARE default now
  detector  FLARE default fit on both, as ``flare purify`` runs it (subspace search, UMAP, HDBSCAN,
            decision, latent stage); the row also holds the fit's own seconds per phase
  views     per-class UMAP + HDBSCAN views for the dashboard (``class_views``)
  export    writing the purified set (``export_subset``)

    python3 -m benchmarks.speed                         # N = 10k, 30k, 60k on fmnist-badnets-10
    python3 -m benchmarks.speed --sizes 10000 --skip-profile
    python3 -m benchmarks.speed --cifar ~/.cache/flare-data/cifar10 --cifar-model benchmarks/zoo/cifar-badnets-10/model.pt
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.common import CACHE, REPO, RESULTS, cpu_seconds, machine, read_json, write_csv, write_json

logger = logging.getLogger(__name__)

STAGES = ("forward", "features", "latent-features", "features+latent", "detector", "views", "export")
DEFAULT_MODEL = "fmnist-badnets-10"
WARM_NUMBA = os.path.expanduser("~/.cache/flare-workbench/numba")


# --------------------------------------------------------------------------- worker side
def _rss_mb() -> float:
    """Current resident set size of this process (MB), from /proc/self/status."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _subset(train: str, n: int, seed: int = 0):
    """The first ``n`` of a seeded permutation of the training set (poison share preserved on average)."""
    import numpy as np

    from flare_core.data import load_dataset

    ds = load_dataset(train)
    if n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    return ds.subset(idx)


def worker(stage: str, model_path: str, train: str, n: int, scratch: str, device: str = "cpu") -> dict:
    """Run one stage once and return its wall time and memory (called in a fresh process)."""
    import numpy as np
    import torch

    from flare_core.models import load_model

    # FLARE_SPEED_THREADS=1 while other jobs share the machine: two threads then spin for cores they do
    # not get, which inflates both wall and CPU time
    threads = int(os.environ.get("FLARE_SPEED_THREADS", min(2, os.cpu_count() or 1)))
    torch.set_num_threads(threads)
    scratch = Path(scratch)
    model = load_model(model_path, device=device)
    ds = _subset(train, n)
    feats_path = scratch / f"features-{n}.npy"
    flags_path = scratch / f"flags-{n}.npz"
    latent_path = scratch / f"latent-{n}.npz"
    extra = {}
    before = _rss_mb()
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    if stage == "forward":
        from flare_core.models.training import predict_logits

        predict_logits(model, ds.images, batch_size=256)
    elif stage == "features":
        from flare_core.features import extract_abnormality_features

        f = extract_abnormality_features(model, ds, batch_size=256, out=str(feats_path))
        extra["layers"] = len(f.layer_names)
    elif stage == "latent-features":
        from flare_core.features import extract_latent_features

        lat = extract_latent_features(model, ds, batch_size=256)
        np.savez(latent_path, pooled=lat.pooled, logits=lat.logits)
    elif stage == "features+latent":
        from flare_core.features import extract_abnormality_features

        f = extract_abnormality_features(model, ds, batch_size=256, out=str(feats_path), latent=True)
        extra["layers"] = len(f.layer_names)
        np.savez(latent_path, pooled=f.latent.pooled, logits=f.latent.logits)
    elif stage == "detector":
        from benchmarks.detect_matrix import run_our_detector

        X = np.load(feats_path)
        pooled = logits = None
        if latent_path.is_file():  # FLARE default as `flare purify` runs it: with the latent stage
            with np.load(latent_path) as lat:
                pooled, logits = lat["pooled"], lat["logits"]
        before = _rss_mb()
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        r = run_our_detector("flare", X, pooled, ds.labels, seed=0, logits=logits)
        extra["subspace"] = r["subspace"]
        extra["n_flagged"] = int(r["flagged"].sum())
        extra["latent_stage"] = logits is not None
        extra["phases"] = r.get("phase_seconds")

        class est:  # noqa: N801 - the two results the next stages need
            flagged_, subspace_ = r["flagged"], r["subspace"]
        np.savez(flags_path, flagged=np.asarray(est.flagged_, bool), subspace=np.asarray(
            getattr(est, "subspace_", None) or X.shape[1]))
    elif stage == "views":
        from flare_core.detectors.views import class_views

        X = np.load(feats_path)
        fl = np.load(flags_path)
        sub = int(fl["subspace"])
        before = _rss_mb()
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        class_views(X[:, :sub], ds.labels, flagged=fl["flagged"], random_state=0)
    elif stage == "export":
        from flare_core.data.writers import export_subset

        fl = np.load(flags_path)
        out = scratch / f"export-{n}"
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        export_subset(ds, np.flatnonzero(~fl["flagged"]), out, overwrite=True)
        shutil.rmtree(out, ignore_errors=True)
    else:
        raise ValueError(stage)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    return {"stage": stage, "n": len(ds), "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 2),
            "torch_threads": threads,
            "rss_before_mb": round(before, 1),
            "peak_rss_mb": round(_peak_mb(), 1), **extra}


# --------------------------------------------------------------------------- driver side
def _env(numba_dir: Optional[str] = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["NUMBA_CACHE_DIR"] = numba_dir or env.get("NUMBA_CACHE_DIR", WARM_NUMBA)
    return env


def measure(stage: str, model: str, train: str, n: int, scratch: Path, device: str = "cpu") -> dict:
    """One stage in a fresh subprocess; its JSON result."""
    cmd = [sys.executable, "-m", "benchmarks.speed", "--worker", stage, "--model", model, "--train", train,
           "--n", str(n), "--scratch", str(scratch), "--device", device]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    if p.returncode != 0:
        logger.error("speed worker %s n=%d failed: %s", stage, n, p.stderr[-2000:])
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"stage": stage, "n": n, "seconds": None, "rss_before_mb": None, "peak_rss_mb": None,
                "note": f"FAILED: {last[:200]}"}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_seconds"] = round(time.perf_counter() - t0, 2)
    return res


_NUMBA_SNIPPET = """
import time, json, numpy as np
t0 = time.perf_counter(); import umap, hdbscan; t1 = time.perf_counter()
X = np.random.default_rng(0).normal(size=(2000, 8)).astype('float32')
umap.UMAP(n_neighbors=40, min_dist=0.0, random_state=0).fit_transform(X); t2 = time.perf_counter()
hdbscan.HDBSCAN(min_cluster_size=50).fit(X[:, :2]); t3 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 2), "umap_first_fit_s": round(t2 - t1, 2), "hdbscan_first_fit_s": round(t3 - t2, 2), "total_s": round(t3 - t0, 2)}))
"""


def numba_cold_warm() -> dict:
    """UMAP/HDBSCAN import + first fit on 2,000 points with an empty numba cache vs the warm one."""
    out = {}
    cold_dir = tempfile.mkdtemp(prefix="numba-cold-")
    try:
        for label, d in (("cold", cold_dir), ("warm", WARM_NUMBA)):
            p = subprocess.run([sys.executable, "-c", _NUMBA_SNIPPET], env=_env(d), capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-2000:])
            out[label] = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(cold_dir, ignore_errors=True)
    return out


def profile_full_run(model: str, train: str, n: int, out_dir: Path, top: int = 25) -> dict:
    """cProfile of one ``run_analysis`` (FLARE default, views on, export on) on ``n`` samples."""
    from flare_core.data.writers import save_npz
    from flare_core.pipeline import AnalysisConfig, run_analysis

    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="flare-profile-", dir=CACHE))
    try:
        data = tmp / "data.npz"
        save_npz(_subset(train, n), data)
        try:
            import flare_core.detectors.views  # noqa: F401
            views = True
        except ImportError:  # not landed yet: profile without the per-class views
            views = False
        cfg = AnalysisConfig(model=model, data=str(data), seed=0, views=views)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        run = run_analysis(cfg, tmp / "run", export=True)
        prof.disable()
        total = time.perf_counter() - t0
        s = io.StringIO()
        stats = pstats.Stats(prof, stream=s)
        stats.sort_stats("cumulative").print_stats(top)
        cum = s.getvalue()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
        (out_dir / "profile_full_run.txt").write_text(f"# run_analysis on {n} samples, {total:.1f}s\n\n"
                                                     f"## by cumulative time\n{cum}\n## by own time\n{s.getvalue()}")
        return {"n": n, "seconds": round(total, 2), "views": views, "timings": run.meta.get("timings"),
                "peak_rss_mb": run.meta.get("peak_rss_mb")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(sizes: Sequence[int], model: str, train: str, *, label: str, stages: Sequence[str] = STAGES,
        device: str = "cpu", scratch_root: Path = CACHE) -> list:
    """Each stage at each N in a fresh subprocess (stages in order: later ones reuse earlier outputs)."""
    Path(scratch_root).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="speed-", dir=scratch_root))
    rows = []
    try:
        for n in sizes:
            for st in stages:
                logger.info("%s n=%d %s", label, n, st)
                r = measure(st, model, train, n, scratch, device)
                r.update({"dataset": label, "model": os.path.relpath(model, REPO) if str(model).startswith(str(REPO)) else model})
                rows.append(r)
                print(json.dumps(r))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for ds in sorted({r["dataset"] for r in rows}):
        for st in STAGES:
            pts = sorted((r["n"], r["seconds"]) for r in rows if r["stage"] == st and r["dataset"] == ds
                         and r.get("seconds") is not None)
            if pts:
                ax.loglog([p[0] for p in pts], [max(p[1], 1e-3) for p in pts], "o-" if "fashion" in ds else "s--",
                          label=f"{st} ({ds})")
    ax.set_xlabel("N samples")
    ax.set_ylabel("wall seconds")
    ax.set_title("Stage time vs N (2-core shared CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cifar_data(root: str, model: str, which: str) -> tuple:
    """(training-set .npz, row label) for the CIFAR-10 row: the zoo entry's own poisoned set (the model's
    folder name under benchmarks/zoo/ names the entry) or the clean training set."""
    from flare_core.data import load_dataset, save_npz

    if which == "clean":
        cnpz = CACHE / "cifar-train.npz"
        if not cnpz.is_file():
            save_npz(load_dataset(root, split="train"), cnpz)
        return str(cnpz), "cifar10 (clean data)"
    from benchmarks.zoo import build, cifar_specs

    name = Path(model).resolve().parent.name
    specs = cifar_specs(root)
    if name not in specs:
        raise SystemExit(f"--cifar-data poisoned needs a zoo model (benchmarks/zoo/<cifar entry>/model.pt), got {model}")
    spec = specs[name]
    label = f"cifar10 ({spec.attack} {100 * spec.rate:g} %)" if spec.attack else "cifar10 (clean data)"
    return str(build(spec).train), label


def pass_ratios(rows: list) -> dict:
    """Per dataset and N: each feature pass ('features', 'features+latent', and the two separate passes
    FLARE default used to make) over the plain forward pass, by wall time and, where measured, CPU time."""
    out: dict = {}
    for ds, n in sorted({(r["dataset"], r["n"]) for r in rows}):
        by = {r["stage"]: r for r in rows if r["dataset"] == ds and r["n"] == n}
        fwd = by.get("forward")
        if not fwd or not fwd.get("seconds"):
            continue
        cell = {}
        passes = {"features": ["features"], "features+latent": ["features+latent"],
                  "two passes (features, then latent-features)": ["features", "latent-features"]}
        for label, stages in passes.items():
            if all(st in by and by[st].get("seconds") for st in stages):
                wall = sum(by[st]["seconds"] for st in stages) / fwd["seconds"]
                cpu = (sum(by[st]["cpu_seconds"] for st in stages) / fwd["cpu_seconds"]
                       if all(by[st].get("cpu_seconds") for st in stages + ["forward"]) else None)
                cell[label] = {"wall": round(wall, 2), "cpu": None if cpu is None else round(cpu, 2)}
        if cell:
            out[f"{ds} {n}"] = cell
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None)
    p.add_argument("--train", default=None)
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--scratch", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="10000,30000,60000")
    p.add_argument("--skip-profile", action="store_true")
    p.add_argument("--skip-numba", action="store_true")
    p.add_argument("--profile-n", type=int, default=30000)
    p.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder root (adds the 50k row)")
    p.add_argument("--cifar-model", default=None)
    p.add_argument("--only-cifar", action="store_true",
                   help="measure only the CIFAR-10 50k row; keep the Fashion-MNIST rows, numba and profile results")
    p.add_argument("--cifar-data", choices=("poisoned", "clean"), default="poisoned",
                   help="the zoo model's own (poisoned) training set, or the clean CIFAR-10 training set "
                        "(nothing to find: the subspace search tries every prefix, the worst case)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help="stages to measure (in order; each reuses what the earlier ones left); rows of other "
                        "stages are kept from the last run")
    args = p.parse_args(argv)
    if args.worker:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(worker(args.worker, args.model, args.train, args.n, args.scratch, args.device)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from benchmarks.zoo import FMNIST_SPECS, build

    out_dir = RESULTS / "speed"
    entry = build(FMNIST_SPECS[DEFAULT_MODEL])
    sizes = [int(s) for s in args.sizes.split(",") if s]
    prev = read_json(out_dir / "speed.json", {}) or {}
    if args.only_cifar and not (args.cifar and args.cifar_model):
        p.error("--only-cifar needs --cifar ROOT and --cifar-model MODEL")
    stages = [x for x in args.stages.split(",") if x]
    if unknown := [x for x in stages if x not in STAGES]:
        p.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    rows = list(prev.get("rows", []))

    def merge(new: list) -> None:  # a new row replaces the earlier one of the same dataset, N and stage
        key = lambda r: (r.get("dataset"), r.get("n"), r.get("stage"))  # noqa: E731
        fresh = {key(r) for r in new}
        rows[:] = [r for r in rows if key(r) not in fresh] + new

    if args.only_cifar:  # keep the Fashion-MNIST rows and their run's description
        result = {k: prev.get(k) for k in ("machine", "load_average", "command")}
    else:
        merge(run(sizes, str(entry.model), str(entry.train), label="fashion-mnist", stages=stages))
        result = {"machine": machine(), "load_average": os.getloadavg(),
                  "command": "python3 -m benchmarks.speed"
                  + (f" --sizes {args.sizes}" if args.sizes != "10000,30000,60000" else "")}
    if args.cifar and args.cifar_model:
        cdata, clabel = cifar_data(args.cifar, args.cifar_model, args.cifar_data)
        merge(run([50000], args.cifar_model, cdata, label=clabel, stages=stages))
        result.setdefault("cifar_commands", {k: v for k, v in (prev.get("cifar_commands") or {}).items()})
        result["cifar_commands"][clabel] = (f"python3 -m benchmarks.speed --only-cifar --cifar {args.cifar} "
                                            f"--cifar-model {os.path.relpath(args.cifar_model, REPO)} "
                                            f"--cifar-data {args.cifar_data}")
        result["cifar_load_average"] = os.getloadavg()
    elif prev.get("cifar_commands"):
        result.update({k: prev[k] for k in ("cifar_commands", "cifar_load_average") if k in prev})
    result["rows"] = rows
    result["pass_over_forward"] = pass_ratios(rows)
    # the abnormality pass alone, by wall time (the key earlier runs and the quick smoke run write)
    result["feature_pass_over_forward"] = {key: cell["features"]["wall"]
                                           for key, cell in result["pass_over_forward"].items() if "features" in cell}
    keep = args.only_cifar
    result["numba"] = prev.get("numba") if (args.skip_numba or keep) else numba_cold_warm()
    result["profile"] = prev.get("profile") if (args.skip_profile or keep) else profile_full_run(
        str(entry.model), str(entry.train), args.profile_n, out_dir)
    write_json(out_dir / "speed.json", result)
    write_csv(out_dir / "speed.csv", rows)
    plot(rows, RESULTS.parent / "plots" / "speed_loglog.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
