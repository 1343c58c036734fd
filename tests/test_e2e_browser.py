"""End to end in a real browser: the real Streamlit server driven by headless Chromium (Playwright).

fresh start (the demo loads by itself) -> analyse -> explore a class -> select points (lasso) -> inspect Grad-CAM ->
mark decisions -> export -> evaluate (retrain on the purified set), then the exported files are checked. A screenshot of every page goes to assets/screenshots/<page>.png when FLARE_UPDATE_SCREENSHOTS=1.

Skips cleanly when /usr/bin/chromium or playwright is missing. Uses the small demo (FLARE_DEMO_SIZE=small:
200 images per class) so it finishes in a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parent.parent
# README screenshots are refreshed only on request (FLARE_UPDATE_SCREENSHOTS=1); otherwise the test writes its
# screenshots to a temporary folder so a test run never modifies tracked files.
SHOTS = (REPO / "assets" / "screenshots" if os.environ.get("FLARE_UPDATE_SCREENSHOTS") == "1"
         else Path(tempfile.gettempdir()) / "flare-e2e-screenshots")
READY_JS = """() => !!document.querySelector('h1') && !document.querySelector('[data-test-script-state="running"]')
 && !document.querySelector('[data-testid="stStatusWidget"]') && !document.querySelector('[data-testid="stSpinner"]')
 && !document.querySelector('[data-testid="stSkeleton"]')
 && document.querySelectorAll('[data-testid="stPlotlyChart"]').length
    == document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot').length"""

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (Debian package 'chromium')", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(tmp_path: Path, cache: Path, **extra_env):
    """Start the dashboard as users do (``streamlit run app.py``); yields its URL."""
    port = _free_port()
    env = {**os.environ, "FLARE_CACHE": str(cache), "FLARE_ROOTS": os.pathsep.join([str(tmp_path), str(cache)]),
           "FLARE_DEMO_SIZE": "small", "PYTHONUNBUFFERED": "1"}
    env.pop("FLARE_OPEN_RUN", None)
    env.pop("FLARE_NO_DEMO", None)
    env.update(extra_env)
    env.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "flare-workbench" / "numba"))
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port", str(port),
                             "--server.headless", "true"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the dashboard did not start: " + (tmp_path / "server.log").read_text()[-2000:])
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def server(tmp_path):
    """The dashboard as users start it, with its cache and allowed roots inside tmp_path."""
    cache = Path(os.environ.get("FLARE_E2E_CACHE", tmp_path / "cache"))  # reuse a demo cache when given
    (cache / "last_run.json").unlink(missing_ok=True)  # a fresh start with nothing to reopen (a reused cache too)
    with serve(tmp_path, cache) as url:
        yield url, tmp_path, cache


def wait_idle(page, timeout_s: float = 120) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function(READY_JS, timeout=timeout_s * 1000, polling=100)
    page.wait_for_timeout(300)


def no_error_on_page(page) -> None:
    errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    assert not errors, errors
    assert page.locator('[data-testid="stException"]').count() == 0


def wait_for(page, locator, timeout_s: float) -> None:
    """Wait until ``locator`` shows, failing at once with the page's message when an error shows instead."""
    error = page.locator('[data-testid="stAlertContentError"]')
    locator.or_(error).first.wait_for(timeout=timeout_s * 1000)
    no_error_on_page(page)


def go(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.locator("h1", has_text=title).first.wait_for(timeout=60_000)
    wait_idle(page)


def shot(page, name: str) -> None:
    """A screenshot of the whole page (the viewport grows to the content's height for it)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1440, "height": int(min(max(height + 40, 900), 4000))})
    page.wait_for_timeout(800)
    wait_idle(page)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size({"width": 1440, "height": 900})


FLAGGED_BOX_JS = """(gd) => {
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const xs = [], ys = [];
  for (const t of gd._fullData) {
    if (t.visible !== true || !t.marker || t.marker.symbol !== 'x' || !t.x) continue;
    for (let i = 0; i < t.x.length; i++) if (t.x[i] !== null) { xs.push(xa.d2p(t.x[i])); ys.push(ya.d2p(t.y[i])); }
  }
  if (!xs.length) return null;
  return [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];
}"""


def lasso(page, chart) -> None:
    """Draw a lasso (the plot's drag mode) around the flagged samples (✕), or the whole plot when none are shown."""
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    area = chart.locator(".nsewdrag").first
    box = area.bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    flagged = chart.locator(".js-plotly-plot").first.evaluate(FLAGGED_BOX_JS)
    if flagged:  # pixel box inside the plotting area, padded
        left, top = max(x0 + 2, x0 + flagged[0] - 12), max(y0 + 2, y0 + flagged[1] - 12)
        right, bottom = min(x0 + w - 2, x0 + flagged[2] + 12), min(y0 + h - 2, y0 + flagged[3] + 12)
    else:
        left, top, right, bottom = x0 + 3, y0 + 3, x0 + w - 3, y0 + h - 3
    pts = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top + 2)]
    page.mouse.move(*pts[0])
    page.mouse.down()
    for x, y in pts[1:]:
        page.mouse.move(x, y, steps=12)
    page.mouse.up()


@pytest.mark.timeout(1500)
def test_demo_flow_in_a_real_browser(server):
    from flare_core.data import load_dataset
    from flare_core.run_folder import RunFolder

    url, tmp, cache = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
        page.set_default_timeout(60_000)
        try:
            # ---- Load: a fresh start with nothing to reopen opens on the built-in demo ------------------------
            page.goto(url)
            wait_for(page, page.get_by_text("Next: run the analysis"), 600)
            wait_idle(page)
            no_error_on_page(page)
            assert page.get_by_text("The built-in demo is loaded").count() >= 1
            assert page.get_by_text("samples", exact=True).count() >= 1
            shot(page, "load")
            # ... and the demo is still one click away (reloaded from its cache)
            page.get_by_role("button", name="Start the demo").click()
            wait_idle(page)
            no_error_on_page(page)
            assert page.get_by_text("Next: run the analysis").count() == 1

            # ---- Analyse --------------------------------------------------------------------------------------
            go(page, "Analyse")
            # "Open the cached result" when FLARE_E2E_CACHE points at a cache that already holds this analysis
            page.get_by_role("button", name=re.compile("Run the analysis|Open the cached result")).click()
            wait_for(page, page.get_by_text("Next: explore the classes"), 1200)
            wait_idle(page)
            no_error_on_page(page)
            run_path = Path(json.loads((cache / "last_run.json").read_text())["run"])
            run = RunFolder(run_path)
            assert run.n_samples == 2000 and run.ground_truth() is not None
            run.set_decisions(list(run.decisions()), None)  # a reused cache may hold an earlier test's marks
            assert page.get_by_text("The differences are on the Inspect page").count() == 1  # the trigger test
            shot(page, "analyse")

            # ---- Explore a class, select points ---------------------------------------------------------------
            go(page, "Explore")
            no_error_on_page(page)
            charts = page.locator('[data-testid="stPlotlyChart"]')
            assert charts.count() == 2
            assert page.locator(".gtitle", has_text=re.compile(r"^Class \d+: ")).count() == 1
            lasso(page, charts.nth(1))
            page.get_by_role("heading", name="Selection (").filter(has_not_text="(0 samples)").first.wait_for()
            wait_idle(page)
            heading = page.get_by_role("heading", name="Selection (").first.inner_text()
            n_selected = int(heading.split("(")[1].split()[0].replace(",", ""))
            assert n_selected >= 10, heading
            assert page.locator('[data-testid="stImage"]').count() >= 10
            shot(page, "explore")

            # ---- Inspect the selection with Grad-CAM, mark decisions ------------------------------------------
            page.get_by_role("button", name="Inspect with Grad-CAM").click()
            page.locator("h1", has_text="Inspect").wait_for()
            wait_idle(page, 300)
            no_error_on_page(page)
            assert page.get_by_text(f"{n_selected:,} samples").count() >= 1
            overlays = page.locator('[data-testid="stImage"]')
            assert overlays.count() >= 2 * 8  # image + Grad-CAM overlay per sample on the first page
            decisions = page.locator('[data-testid="stRadio"]').filter(has=page.get_by_text("keep", exact=True))
            decisions.nth(0).get_by_text("remove", exact=True).click()
            wait_idle(page)
            decisions.nth(1).get_by_text("keep", exact=True).click()
            wait_idle(page)
            assert sorted(run.decisions().values()) == ["keep", "remove"]  # saved to the run folder at once
            # the selection can be tested as a trigger group on request (the result is a table on the page)
            page.get_by_text("Do these samples share a trigger?").click()
            wait_idle(page)  # a click sent while a rerun is still in flight was once lost (CI, session 32)
            page.get_by_role("button", name="Run the trigger test").click()
            wait_for(page, page.get_by_text("shown minus the rest").first, 300)
            no_error_on_page(page)
            # the demo's BadNets patch is what its flagged samples share: the trigger test says so on the page
            assert run.flag_triggers(), "the demo run recorded no trigger test of its flagged samples"
            page.get_by_text("Do the flagged samples share a trigger?").wait_for()
            assert page.get_by_text("flagged minus the rest").count() >= 1
            shot(page, "inspect")

            # ---- Export ---------------------------------------------------------------------------------------
            go(page, "Export")
            out = tmp / "purified-demo"
            box = page.get_by_label("Output folder on the server")
            box.fill(str(out))
            box.press("Enter")
            wait_idle(page)
            page.get_by_role("button", name="Write the purified dataset").click()
            wait_for(page, page.get_by_text("Wrote "), 300)
            no_error_on_page(page)
            with page.expect_download() as dl:
                page.get_by_role("button", name="Download manifest.csv").click()
            dl.value.save_as(tmp / "manifest.csv")
            page.get_by_role("button", name="Build the HTML report").click()
            wait_for(page, page.get_by_role("button", name="Download report.html"), 300)
            with page.expect_download() as dl:
                page.get_by_role("button", name="Download report.html").click()
            dl.value.save_as(tmp / "report.html")
            wait_idle(page)
            shot(page, "export")

            # ---- Evaluate (ground truth known) ----------------------------------------------------------------
            go(page, "Evaluate")
            no_error_on_page(page)
            assert page.get_by_text("F1 after your review").count() == 1
            # BA/ASR before and after retraining on the purified set, on request
            page.get_by_role("button", name=re.compile("Retrain on the purified set|Retrain again")).click()
            wait_for(page, page.get_by_text("saved in the run folder"), 900)
            wait_idle(page)
            no_error_on_page(page)
            assert page.get_by_text("ASR after retraining").count() == 1
            shot(page, "evaluate")
        except Exception:
            page.screenshot(path=str(tmp / "failure.png"), full_page=True)
            print(f"screenshot of the failure: {tmp / 'failure.png'}; server log: {tmp / 'server.log'}")
            raise
        finally:
            browser.close()

    # ---- the exported files ---------------------------------------------------------------------------------------
    removal = run.removal_mask()
    purified = load_dataset(out)
    source = load_dataset(run.meta["config"]["data"])
    assert len(purified) == run.n_samples - int(removal.sum())
    assert np.array_equal(purified.images, source.images[~removal])
    assert np.array_equal(purified.labels, source.labels[~removal])
    import pandas as pd

    manifest = pd.read_csv(tmp / "manifest.csv", keep_default_na=False)
    assert len(manifest) == run.n_samples and int(manifest["removed"].sum()) == int(removal.sum())
    assert sorted(v for v in manifest["decision"] if v) == ["keep", "remove"]
    retrained = json.loads((run_path / "retrain.json").read_text(encoding="utf-8"))
    assert retrained["n_train_after"] == run.n_samples - int(removal.sum())
    assert 0.0 <= retrained["after"]["benign_accuracy"] <= 1.0 and retrained["after"]["attack_success_rate"] is not None
    report = (tmp / "report.html").read_text(encoding="utf-8")
    assert "Counts per class" in report and "src='data:image/png;base64," in report
    assert "<script src=" not in report


@pytest.mark.timeout(300)
def test_a_sub_page_is_the_first_request_after_a_server_start(tmp_path):
    """Reloading e.g. /explore right after a server start runs the page inside app.py's navigation, not as a
    legacy ``pages/`` page (Streamlit's legacy discovery is on until some session calls st.navigation)."""
    from test_app_support import make_run

    run = make_run(tmp_path / "run")
    with serve(tmp_path, tmp_path / "cache", FLARE_OPEN_RUN=str(run.path), FLARE_NO_DEMO="1") as url, \
            sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        try:
            for _ in range(2):  # the first request, then a reload
                page.goto(f"{url}/explore")
                page.locator("h1", has_text="Explore").first.wait_for(timeout=60_000)
                wait_idle(page)
                no_error_on_page(page)
                nav = [t.split()[-1] for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]
                assert nav == ["Load", "Analyse", "Explore", "Inspect", "Export", "Evaluate"]
                assert page.get_by_text("Current analysis").count() == 1  # app.py's sidebar: the page ran inside it
        finally:
            browser.close()


@pytest.mark.timeout(300)
def test_a_dataset_folder_uploads_from_the_browser_with_its_class_folders(tmp_path):
    """The browser sends each file of an uploaded folder named by its path under the folder's parent
    (``pets/cat/0.png``); the Load page rebuilds the tree from those names. AppTest cannot show that part."""
    from PIL import Image

    from flare_core.models import build_model, save_checkpoint

    save_checkpoint(build_model("small-cnn", 3, 1, (16, 16)), tmp_path / "m.pt", arch="small-cnn", num_classes=3,
                    in_channels=1, image_size=(16, 16), classes=["cat", "dog", "eel"])
    rng = np.random.default_rng(0)
    pets = tmp_path / "upload" / "pets"
    for c in ("cat", "dog", "eel"):
        (pets / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(pets / c / f"{i}.png")
    with serve(tmp_path, tmp_path / "cache", FLARE_NO_DEMO="1") as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        try:
            page.goto(url)
            page.locator("h1", has_text="Load").first.wait_for(timeout=60_000)
            wait_idle(page)
            page.get_by_text("Use my own model and dataset").click()
            wait_idle(page)
            page.get_by_label("Model file on the server").fill(str(tmp_path / "m.pt"))
            folder = page.locator('.st-key-folder_upload input[type="file"]')
            folder.set_input_files(str(pets))
            page.locator('.st-key-folder_upload').get_by_text("dog/1.png").or_(
                page.locator('.st-key-folder_upload').get_by_text("showing page")).first.wait_for(timeout=30_000)
            page.get_by_role("button", name="Load model and dataset").click()
            wait_for(page, page.locator('[data-testid="stMetricValue"]').first, 120)
            wait_idle(page)
            values = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
            assert values[:3] == ["9", "3", "16×16×1"], values
            shot(page, "load-folder-upload")
            stored = sorted(p.relative_to(tmp_path / "cache" / "uploads").as_posix()
                            for p in (tmp_path / "cache" / "uploads").rglob("*.png"))
            assert len(stored) == 9 and all(s.split("/", 1)[1].startswith("folder/pets/") for s in stored), stored
        finally:
            browser.close()
