"""Dashboard timings on a Fashion-MNIST-sized run (60,000 samples, 10 classes of 6,000), written to
benchmarks/dashboard_timings.json.

Measured:
  * in-process: building + serialising the per-class scatter (6,000 points), the all-classes figure with the
    in-plot class menu (10 x 6,000 points, built once per run) and the global scatter (60,000 points, downsampled
    to 20,000 for the browser);
  * in a real browser (headless Chromium via Playwright, skipped when missing): warm app start to a usable
    page (a run reopened; and the README's command with nothing to reopen, which opens on the built-in demo), the Explore page's first render, switching the class view (with the plot's own class menu), showing
    the global view, and a zoom on the global view (how interactive 60,000 points stay).

The run folder is synthetic (random clustered embeddings) but has exactly the shapes a real analysis writes;
the timings depend on point counts, not on what the points mean.

    python3 benchmarks/dashboard_timings.py [--no-browser] [--repeats 5] [--note "what else ran meanwhile"]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flare_core import plots  # noqa: E402
from flare_core.run_folder import write_run  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@dataclass
class View:
    indices: np.ndarray
    embedding: np.ndarray
    clusters: np.ndarray
    cluster_stability: dict


def synthetic_run(path: Path, per_class: int = 6000, k: int = 10, seed: int = 0):
    """A run folder shaped like Fashion-MNIST's: k classes of ``per_class``, 2-4 clusters each, 1 % flagged."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per_class)
    n = len(labels)
    flagged = np.zeros(n, bool)
    clusters = np.zeros(n, int)
    views = {}
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        n_cl = 2 + c % 3
        cl = rng.integers(0, n_cl, len(idx))
        cl[rng.random(len(idx)) < 0.03] = -1
        centres = rng.normal(scale=6.0, size=(n_cl, 2))
        emb = rng.normal(size=(len(idx), 2)) + np.where(cl[:, None] >= 0, centres[np.maximum(cl, 0)], 0.0)
        small = cl == n_cl - 1
        flagged[idx[small][: per_class // 100]] = True
        clusters[idx] = cl
        views[c] = View(idx, emb.astype(np.float32), cl, {i: 0.5 + 0.1 * i for i in range(n_cl)})
    manifest = pd.DataFrame({
        "index": np.arange(n), "source": [f"/data/fashion-mnist/train.npz#{i}" for i in range(n)], "label": labels,
        "class_name": [f"class-{i}" for i in labels], "flagged": flagged.astype(int),
        "score": rng.random(n).round(4), "cluster": clusters,
    })
    meta = {"format": "flare-run/1", "created": "benchmark", "config": {"model": "", "data": ""},
            "dataset": {"path": "/data/fashion-mnist/train.npz", "classes": [f"class-{i}" for i in range(k)]},
            "detector": {"name": "flare", "params": {}}, "result": {"n_flagged": int(flagged.sum())}}
    emb = rng.normal(scale=8, size=(n, 2)).astype(np.float32) + labels[:, None] * 3
    return write_run(path, meta=meta, manifest=manifest, embedding=emb, views=views)


def _median_ms(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1), "repeats": repeats}


def in_process(run, repeats: int) -> dict:
    import plotly.io as pio

    df = run.manifest
    flagged, scores, sources = run.flagged(), run.scores(), df["source"].to_numpy()

    def class_view(label):
        v = run.class_view(label)
        fig = plots.class_scatter(v.embedding, v.clusters, v.indices, flagged[v.indices], scores=scores[v.indices],
                                  sources=sources[v.indices], stability=v.stability, title=f"class {label}")
        return pio.to_json(fig, validate=False)

    def global_view():
        fig = plots.global_scatter(run.embedding(), df["label"].to_numpy(), run.classes, flagged)
        return pio.to_json(fig, validate=False)

    def class_menu():
        figs = []
        for label in range(10):
            v = run.class_view(label)
            figs.append((f"class {label}", plots.class_scatter(
                v.embedding, v.clusters, v.indices, flagged[v.indices], scores=scores[v.indices],
                sources=sources[v.indices], stability=v.stability, title=f"Class {label}")))
        return plots.class_menu(figs, default=0)

    menu = class_menu()

    def menu_rerun():  # what st.plotly_chart does with the cached figure on every rerun of the Explore fragment
        import plotly.tools

        return pio.to_json(plotly.tools.return_figure_from_figure_or_data(menu, validate_figure=True), validate=False)

    labels = iter(range(10**6))
    return {
        "class_menu_10x6000_points_build_once": {**_median_ms(class_menu, max(1, repeats // 2)),
                                                 "json_bytes": len(menu_rerun())},
        "class_menu_serialise_per_rerun": _median_ms(menu_rerun, repeats),
        "class_view_6000_points_build_and_serialise": {**_median_ms(lambda: class_view(next(labels) % 10), repeats),
                                                       "json_bytes": len(class_view(0))},
        "global_view_60000_points_build_and_serialise": {**_median_ms(global_view, repeats),
                                                         "json_bytes": len(global_view()),
                                                         "points_sent": plots.MAX_POINTS},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


READY_JS = """() => !!document.querySelector('h1') && !document.querySelector('[data-test-script-state="running"]')
 && !document.querySelector('[data-testid="stStatusWidget"]') && !document.querySelector('[data-testid="stSpinner"]')
 && !document.querySelector('[data-testid="stSkeleton"]')
 && document.querySelectorAll('[data-testid="stPlotlyChart"]').length
    == document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot').length"""


WS_COUNTER_JS = """
window.__flareWsMessages = 0;
const _FlareWS = window.WebSocket;
window.WebSocket = function (...args) {
  const ws = new _FlareWS(...args);
  ws.addEventListener('message', () => { window.__flareWsMessages += 1; });
  return ws;
};
window.WebSocket.prototype = _FlareWS.prototype;
Object.assign(window.WebSocket, _FlareWS);
"""


def start_server(port: int, env: dict, t0: float, limit_s: float = 120) -> subprocess.Popen:
    """``streamlit run app.py`` on ``port``; returns once its health endpoint answers (``t0``: the start time)."""
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port",
                               str(port), "--server.headless", "true"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            return server
        except OSError:
            if time.perf_counter() - t0 > limit_s:
                server.terminate()
                raise
            time.sleep(0.05)


def wait_ready(page, timeout_ms: int = 120_000) -> None:
    page.wait_for_timeout(100)
    page.wait_for_function(READY_JS, timeout=timeout_ms, polling=20)


def in_browser(run, tmp: Path, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    env = {**os.environ, "FLARE_ROOTS": str(tmp), "FLARE_CACHE": str(tmp / "cache"), "FLARE_OPEN_RUN": str(run.path),
           "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(Path.home() / ".cache/flare-workbench/numba"))}
    out: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        starts = []
        n_starts = 4  # the first start is "cold" (OS file cache, numba cache); the rest are warm restarts
        for attempt in range(n_starts):
            t0 = time.perf_counter()
            server = start_server(port, env, t0)
            try:
                page.goto(f"http://127.0.0.1:{port}/")
                wait_ready(page)
                starts.append(round(time.perf_counter() - t0, 2))
                if attempt < n_starts - 1:
                    server.terminate()
                    server.wait(30)
                    continue
                out["app_start_to_usable_page_s"] = {
                    "what": "process start -> Load page rendered and idle in the browser (run reopened from FLARE_OPEN_RUN)",
                    "cold_first": starts[0], "warm_median": round(statistics.median(starts[1:]), 2),
                    "warm_max": max(starts[1:]), "warm_starts": len(starts) - 1}

                t0 = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}/explore")
                wait_ready(page)
                out["explore_first_render_s"] = round(time.perf_counter() - t0, 2)

                page.add_init_script(WS_COUNTER_JS)
                page.reload()
                wait_ready(page)
                chart = page.locator('[data-testid="stPlotlyChart"]').last
                drawn, idle, round_trips = [], [], []
                for j in range(repeats):
                    target = (j + 1) % 10
                    chart.locator(".updatemenu-header-group").click()
                    option = chart.locator(".updatemenu-dropdown-button").nth(target)
                    option.wait_for(timeout=10_000)
                    page.evaluate("window.__flareWsMessages = 0")
                    t0 = time.perf_counter()
                    option.click()
                    page.wait_for_function(
                        f"() => [...document.querySelectorAll('.gtitle')].some(t => t.textContent.startsWith('Class {target}:'))",
                        timeout=60_000, polling=10)
                    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                    drawn.append(1000 * (time.perf_counter() - t0))
                    page.wait_for_function(READY_JS, timeout=60_000, polling=10)
                    idle.append(1000 * (time.perf_counter() - t0))
                    round_trips.append(page.evaluate("window.__flareWsMessages"))
                    page.wait_for_timeout(300)
                out["class_switch_6000_points_in_browser"] = {
                    "new_class_drawn_median_ms": round(statistics.median(drawn), 1), "new_class_drawn_max_ms": round(max(drawn), 1),
                    "page_idle_median_ms": round(statistics.median(idle), 1), "page_idle_max_ms": round(max(idle), 1),
                    "server_messages_during_switch": max(round_trips), "repeats": repeats,
                    "how": "click on a class in the plot's own menu -> that class's title and points drawn (two animation "
                           "frames later); each class shown for the first time",
                    "note": "every class is in the browser already; the switch is a Plotly update of the same plot "
                            "(no Streamlit rerun, no new WebGL context)"}

                t0 = time.perf_counter()
                page.get_by_text("All classes", exact=True).click()
                page.wait_for_function("() => [...document.querySelectorAll('.gtitle')].some(t => t.textContent.startsWith('All classes'))",
                                       timeout=60_000, polling=20)
                wait_ready(page)
                out["global_view_60000_points_first_render_ms"] = round(1000 * (time.perf_counter() - t0), 1)
                zooms = []
                for j in range(repeats):
                    ms = page.evaluate("""async (j) => {
                        const gd = [...document.querySelectorAll('.js-plotly-plot')].pop();
                        const t0 = performance.now();
                        await Plotly.relayout(gd, {'xaxis.range': [-10 - j, 30 + j], 'yaxis.range': [-10 - j, 40 + j]});
                        await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
                        return performance.now() - t0; }""", j) if page.evaluate("typeof Plotly !== 'undefined'") else None
                    if ms is not None:
                        zooms.append(ms)
                if zooms:
                    out["global_view_zoom_redraw_ms"] = {"median_ms": round(statistics.median(zooms), 1),
                                                         "max_ms": round(max(zooms), 1), "repeats": len(zooms)}
                else:
                    out["global_view_zoom_redraw_ms"] = "not measured (Plotly is not exposed as a page global)"
            finally:
                server.terminate()
                server.wait(30)
        out["app_start_on_the_builtin_demo_s"] = demo_starts(page, tmp, port)
        browser.close()
    return out


def demo_starts(page, tmp: Path, port: int, n_starts: int = 3) -> dict:
    """The README's command with nothing to reopen: process start -> the built-in demo loaded (model and data) and
    the Load page idle. The first start makes the demo's data in an empty cache; the others reuse it."""
    env = {**os.environ, "FLARE_ROOTS": str(tmp), "FLARE_CACHE": str(tmp / "cache-demo"),
           "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(Path.home() / ".cache/flare-workbench/numba"))}
    for key in ("FLARE_OPEN_RUN", "FLARE_NO_DEMO", "FLARE_DEMO_SIZE"):
        env.pop(key, None)
    starts, paints = [], []
    for _ in range(n_starts):
        (tmp / "cache-demo" / "last_run.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        server = start_server(port, env, t0)
        try:
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("h1", has_text="Load a model and a dataset").wait_for(timeout=600_000)
            paints.append(round(time.perf_counter() - t0, 2))
            page.get_by_text("Next: run the analysis").wait_for(timeout=600_000)
            wait_ready(page)
            starts.append(round(time.perf_counter() - t0, 2))
        finally:
            server.terminate()
            server.wait(30)
    from flare_core.demo import demo_source

    return {"what": "process start -> the Load page shown (it says the demo is loading), and -> the built-in demo "
                    "loaded (model + data) with the page idle; nothing to reopen",
            "demo": demo_source(), "load_page_shown_warm_median": round(statistics.median(paints[1:]), 2),
            "demo_loaded_first_start_empty_cache": starts[0],
            "demo_loaded_warm_median": round(statistics.median(starts[1:]), 2), "demo_loaded_warm_max": max(starts[1:]),
            "warm_starts": len(starts) - 1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("dashboard_timings.json")))
    ap.add_argument("--note", default=None, help="what else ran on the machine meanwhile (recorded with the numbers)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="flare-dash-bench-") as d:
        tmp = Path(d).resolve()
        run = synthetic_run(tmp / "run")
        result = {
            "what": "dashboard timings on a synthetic 60,000-sample run (10 classes x 6,000), see dashboard_timings.py",
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                        "browser": "headless Chromium with --disable-gpu (WebGL in software)"},
            "targets": {"class_switch_s": 1.0, "warm_start_s": 5.0},
            "in_process": in_process(run, args.repeats),
        }
        has_browser = Path(CHROMIUM).exists()
        try:
            import playwright  # noqa: F401
        except ImportError:
            has_browser = False
        if args.no_browser or not has_browser:
            result["browser"] = "skipped (no --browser, chromium or playwright)"
        else:
            result["browser"] = in_browser(run, tmp, args.repeats)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.note:
        result["machine"]["note"] = args.note
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
