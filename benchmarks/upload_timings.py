"""How large a dataset the Load page takes as an upload: a zip against a folder picked in the browser.

A folder's files go one HTTP request each (Streamlit's directory uploader); a zip is one request. For each case a
fresh dashboard (``streamlit run app.py``) is driven by headless Chromium (Playwright): the upload is made, the
form's submit button waited for (Streamlit disables it while uploads are pending), the form sent, and the Load
page's sample count read. Images: random 28x28 grayscale PNGs in 10 class folders. Written to
benchmarks/results/upload_timings.json; the 500-file cap on folder uploads (flare_core.server_paths) comes from it.

    python3 benchmarks/upload_timings.py [--zip 2000,10000] [--folder 200,500,1000,2000] [--archive PATH]
        [--note "..."]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import write_json  # noqa: E402
from benchmarks.dashboard_timings import CHROMIUM, CHROMIUM_ARGS, _free_port, start_server, wait_ready  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "upload_timings.json"
SUBMIT_ENABLED_JS = """() => { const b = [...document.querySelectorAll('button')]
  .find(x => x.innerText.includes('Load model and dataset')); return !!b && !b.disabled; }"""


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = root / f"class{i % 10}"
        c.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(c / f"{i:06d}.png")
    return root


def one_case(tmp: Path, n: int, mode: str, limit_s: float) -> dict:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from flare_core.models import build_model, save_checkpoint

    work = tmp / f"{mode}-{n}"
    data = make_folder(work / "pets", n)
    upload = data
    if mode == "zip":
        upload = work / "pets.zip"
        with zipfile.ZipFile(upload, "w") as zf:
            for p in sorted(data.rglob("*.png")):
                zf.write(p, p.relative_to(work).as_posix())
    model = work / "m.pt"
    save_checkpoint(build_model("small-cnn", 10, 1, (28, 28)), model, arch="small-cnn", num_classes=10,
                    in_channels=1, image_size=(28, 28))
    port = _free_port()
    env = {**os.environ, "FLARE_CACHE": str(work / "cache"), "FLARE_ROOTS": str(work), "FLARE_NO_DEMO": "1",
           "FLARE_NO_WARMUP": "1"}
    env.pop("FLARE_OPEN_RUN", None)
    server = start_server(port, env, time.perf_counter())
    record = {"mode": mode, "n_files": n, "upload_mb": round(sum(p.stat().st_size for p in
                                                                   ([upload] if mode == "zip" else data.rglob("*.png"))) / 1e6, 2)}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"http://127.0.0.1:{port}")
            wait_ready(page)
            page.get_by_text("Use my own model and dataset").click()
            wait_ready(page)
            page.get_by_label("Model file on the server").fill(str(model))
            key = "folder_upload" if mode == "folder" else "data_upload"
            t0 = time.perf_counter()
            try:
                page.locator(f'.st-key-{key} input[type="file"]').set_input_files(str(upload))
                page.wait_for_timeout(1000)
                page.wait_for_function(SUBMIT_ENABLED_JS, timeout=limit_s * 1000, polling=500)
                record["upload_s"] = round(time.perf_counter() - t0, 1)
                record["failed_in_browser"] = page.evaluate(
                    f"() => (document.querySelector('.st-key-{key}').innerText.match(/Error/g) || []).length")
                page.get_by_role("button", name="Load model and dataset").click(timeout=limit_s * 1000)
                page.locator('[data-testid="stMetricValue"]').or_(
                    page.locator('[data-testid="stAlertContentError"]')).first.wait_for(timeout=limit_s * 1000)
                wait_ready(page, int(limit_s * 1000))
                record["to_loaded_s"] = round(time.perf_counter() - t0, 1)
                metrics = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
                errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
                record["samples_loaded"] = int(metrics[0].replace(",", "")) if metrics else None
                record["error"] = errors[0][:200] if errors else None
            except PlaywrightError as e:  # the page stopped answering, or the upload never finished
                record["outcome"] = f"gave up after {time.perf_counter() - t0:.0f} s: {str(e).splitlines()[0][:160]}"
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    record.setdefault("outcome", outcome(record))
    return record


def outcome(record: dict) -> str:
    """In words: all loaded, how many arrived when the upload was refused, or how many were lost."""
    n, loaded, error = record["n_files"], record.get("samples_loaded"), record.get("error") or ""
    arrived = re.search(r"holds ([\d,]+) files", error)
    if arrived:
        return f"refused by the cap; {arrived.group(1)} of {n:,} files had reached the server"
    if error:
        return f"error: {error.splitlines()[-1][:160]}"
    return "loaded all" if loaded == n else f"loaded {loaded} of {n}"


def archive_case(path: Path, tmp: Path) -> dict:
    """A dataset archive through the Load page's own upload function (in-process: no browser), then loaded:
    the time to store and unpack it, and to read its training images."""
    from flare_core.data import load_dataset
    from flare_core.server_paths import open_dataset_upload

    data = path.read_bytes()
    t0 = time.perf_counter()
    root = open_dataset_upload(path.name, data, base=tmp / "archive-cache")
    t1 = time.perf_counter()
    ds = load_dataset(root)
    t2 = time.perf_counter()
    return {"mode": "archive, in-process", "file": path.name, "upload_mb": round(len(data) / 1e6, 2),
            "unpack_s": round(t1 - t0, 1), "load_s": round(t2 - t1, 1), "samples_loaded": len(ds),
            "classes": len(ds.classes), "outcome": "loaded"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", default="2000,10000")
    ap.add_argument("--folder", default="200,500,1000,2000")
    ap.add_argument("--limit-s", type=float, default=300, help="give a case up after this long")
    ap.add_argument("--archive", default=None, help="also unpack and load this dataset archive (e.g. the CIFAR-10 "
                                                    "JPEG tarball), in-process")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    if (args.zip.strip() or args.folder.strip()) and not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing (apt-get install chromium): nothing measured")
        return 1
    stored = json.loads(OUT.read_text()) if OUT.is_file() else {}
    record = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "created": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory(prefix="flare-upload-") as tmp:
        rows = []
        for mode, ns in (("zip", args.zip), ("folder", args.folder)):
            for n in (int(v) for v in ns.split(",") if v.strip()):
                rows.append(one_case(Path(tmp), n, mode, args.limit_s))
                print(json.dumps(rows[-1]), flush=True)
                shutil.rmtree(Path(tmp) / f"{mode}-{n}", ignore_errors=True)
        if rows:  # the browser cases, replaced as a whole (they are read against each other)
            stored.update(cases=rows, browser="headless Chromium (Playwright)", note=args.note,
                          command=f"python3 benchmarks/upload_timings.py --zip {args.zip} --folder {args.folder}",
                          **record)
        if args.archive:  # an archive's row is replaced by file name; the others are kept
            row = {**archive_case(Path(args.archive).expanduser(), Path(tmp)), **record,
                   "command": f"python3 benchmarks/upload_timings.py --zip '' --folder '' --archive {args.archive}"}
            print(json.dumps(row), flush=True)
            stored["archives"] = [a for a in stored.get("archives", []) if a["file"] != row["file"]] + [row]
    write_json(OUT, stored)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
