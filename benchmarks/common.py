"""Shared helpers for the benchmarks: paths, machine description, atomic JSON/CSV, running the CLI."""
from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / "cache"
ZOO = BENCH / "zoo"
RESULTS = BENCH / "results"
PLOTS = BENCH / "plots"


def machine() -> dict:
    """A short description of the machine a number was measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host_cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def code_commit() -> str:
    """The short commit of the code a row is measured on, with ``+changes`` when tracked files differ from it (the
    rows under ``benchmarks/results`` that a benchmark writes do not count)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return commit.stdout.strip() + ("+changes" if dirty else "")


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temp file in the same folder, then os.replace), readable as a plain write is."""
    from flare_core.atomic import write_text

    write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: Path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def write_csv(path: Path, rows: Sequence[Mapping], columns: Optional[Sequence[str]] = None) -> None:
    """Write rows (dicts) as CSV atomically; columns default to the union of keys in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    from flare_core.atomic import atomic_path

    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def flare_cmd(args: Sequence[str]) -> list:
    """The argv that runs the project's CLI with this interpreter."""
    return [sys.executable, "-m", "flare_core", *map(str, args)]


def show_cmd(args: Sequence[str]) -> str:
    """The same command as a user would type it (``flare ...``), paths relative to the repository."""
    def rel(a):
        s = str(a)
        try:
            p = Path(s)
            if p.is_absolute() and REPO in p.parents:
                return str(p.relative_to(REPO))
        except ValueError:
            pass
        return s

    return "flare " + " ".join(shlex.quote(rel(a)) for a in args)


def run_flare(args: Sequence[str], log: Optional[Path] = None, env: Optional[dict] = None) -> float:
    """Run ``flare ARGS`` in a subprocess (quiet), raise on failure; returns wall seconds."""
    full_env = dict(os.environ)
    full_env.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    t0 = time.perf_counter()
    proc = subprocess.run(flare_cmd(["-q", *args]), cwd=REPO, env=full_env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {show_cmd(args)}\n{proc.stdout}{proc.stderr}[rc={proc.returncode}, {seconds:.1f}s]\n")
    if proc.returncode != 0:
        raise RuntimeError(f"{show_cmd(args)} failed (rc {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return seconds


def fmt_pct(x, digits: int = 2) -> str:
    """A ratio as a percentage string, '-' for None/NaN."""
    if x is None or x == "":
        return "-"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if x != x:
        return "-"
    return f"{100 * x:.{digits}f}"


def fmt_num(x, digits: int = 3) -> str:
    if x is None or x == "":
        return "-"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if x != x:
        return "-"
    return f"{x:.{digits}f}"


def md_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used so far.  Steadier than wall time on the
    shared machine for one-thread work; with several torch threads on an oversubscribed machine their
    spin-waiting inflates it as well."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def chosen_rows(rows: Sequence[str], allowed: Sequence[str]) -> list:
    """The rows a benchmark command was asked for (all of ``allowed`` when none); exits naming the unknown ones."""
    rows = list(rows) or list(allowed)
    bad = [r for r in rows if r not in allowed]
    if bad:
        raise SystemExit(f"unknown row(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
    return rows


def results_with_rows(path: Path, command: str) -> dict:
    """A benchmark's results file as it stands (rows are added one by one), with its command."""
    results = read_json(path, {}) or {}
    results.setdefault("rows", {})
    results["command"] = command
    return results
