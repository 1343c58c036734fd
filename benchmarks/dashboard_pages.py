"""Every dashboard page on a real run folder, in headless Chromium: time to a usable page, and any error shown.

For a run too large to make in a test (``benchmarks/scale_run.py --keep FOLDER`` writes a million-sample one): the
app is started with ``FLARE_OPEN_RUN=FOLDER`` and each page (Load, Analyse, Explore, Inspect, Export, and Evaluate
when the run has a ground truth) is opened in turn, in one browser session, timed from the navigation to an idle
page (no script running, no spinner, every plot drawn). Each page is opened twice: the first visit pays for
reading the run (and, on Inspect, loading the model and the dataset); the second is what an analyst going back
and forth sees. A screenshot of each first visit goes to ``--shots``. Results: benchmarks/results/dashboard_pages.json,
one row per page and visit, with the run's size and the commit.

    python3 -m benchmarks.dashboard_pages --run FOLDER [--shots DIR] [--label TEXT]
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import code_commit, machine, read_json, write_json  # noqa: E402
from benchmarks.dashboard_timings import CHROMIUM, CHROMIUM_ARGS, _free_port, start_server, wait_ready  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "dashboard_pages.json"
PAGES = ("load", "analyse", "explore", "inspect", "export", "evaluate")
ERRORS_JS = """() => [...document.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]')]
    .map(e => e.innerText.split('\\n')[0].slice(0, 300))"""


def visit(page, url: str, timeout_ms: int) -> dict:
    t0 = time.perf_counter()
    page.goto(url)
    wait_ready(page, timeout_ms)
    seconds = round(time.perf_counter() - t0, 2)
    return {"seconds": seconds, "title": page.locator("h1").first.inner_text(), "errors": page.evaluate(ERRORS_JS)}


def measure(run_dir: Path, shots: Path, timeout_s: float = 600) -> list:
    from playwright.sync_api import sync_playwright

    from flare_core.run_folder import RunFolder

    run = RunFolder(run_dir)
    pages = [p for p in PAGES if p != "evaluate" or run.ground_truth() is not None]
    shots.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = run.meta.get("config", {})
    with tempfile.TemporaryDirectory() as tmp:
        # the dashboard reads only inside its roots: the run's folder, and its model's and dataset's
        roots = [tmp, str(run_dir.parent)] + [str(Path(config[k]).parent) for k in ("model", "data") if config.get(k)]
        env = {**os.environ, "FLARE_ROOTS": os.pathsep.join(roots), "FLARE_CACHE": str(Path(tmp) / "cache"),
               "FLARE_OPEN_RUN": str(run_dir),
               "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(Path.home() / ".cache/flare-workbench/numba"))}
        rows = []
        t0 = time.perf_counter()
        server = start_server(port, env, t0)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                for visit_no in (1, 2):
                    for name in pages:
                        url = f"http://127.0.0.1:{port}/" + ("" if name == "load" else name)
                        row = {"page": name, "visit": visit_no, **visit(page, url, int(timeout_s * 1000))}
                        if visit_no == 1:
                            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
                        print(row, flush=True)
                        rows.append(row)
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run folder (run.json inside)")
    ap.add_argument("--shots", default=str(Path(tempfile.gettempdir()) / "flare-dashboard-pages"))
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    run_dir = Path(args.run).absolute()
    if not (run_dir / "run.json").is_file():
        ap.error(f"{run_dir} is not a run folder (no run.json); make one with benchmarks.scale_run --keep")
    from flare_core.run_folder import RunFolder

    n = RunFolder(run_dir).n_samples
    rows = measure(run_dir, Path(args.shots))
    given = argv if argv is not None else sys.argv[1:]
    record = {"n_samples": n, "rows": rows, "label": args.label, "commit": code_commit(), "machine": machine(),
              "load_average": os.getloadavg(), "command": "python3 -m benchmarks.dashboard_pages " + shlex.join(given)}
    results = read_json(OUT, {"runs": []})
    results["runs"].append(record)
    write_json(OUT, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
