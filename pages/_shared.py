"""What every dashboard page shares: session state, cached loading, error display, the current run.

Session state keys (all pages read and write only these):
    run_path   str   the open run folder (also in the URL ``?run=`` and in ``<cache>/last_run.json``)
    config     AnalysisConfig of the loaded model and data (for a reopened run: rebuilt from run.json)
    model      LoadedModel   (cached per config with st.cache_resource)
    dataset    ImageDataset  (cached per config with st.cache_resource)
    selection  list[int]     sample indices selected in Explore
    inspect_source  'flagged' | 'selection' | 'cluster'
    demo       DemoScenario  when the built-in demo is loaded
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator, Optional

import streamlit as st

from flare_core.atomic import write_json
from flare_core.errors import FlareError
from flare_core.run_folder import RunFolder
from flare_core.server_paths import (cache_dir, check_dataset_files_allowed, check_run_inputs_allowed,
                                     resolve_allowed)

logger = logging.getLogger(__name__)

RUN, CONFIG, MODEL, DATASET, SELECTION, DEMO = "run_path", "config", "model", "dataset", "selection", "demo"
PAGES = {
    "load": "pages/load.py", "analyse": "pages/analyse.py", "explore": "pages/explore.py",
    "inspect": "pages/inspect.py", "export": "pages/export.py", "evaluate": "pages/evaluate.py",
}


# ---- routing -------------------------------------------------------------------------------------------------
def require_app_router() -> None:
    """Called first by every page: make sure it runs inside app.py's ``st.navigation``, never as a legacy page.

    Streamlit still knows the legacy multipage layout, in which every ``pages/*.py`` is a page of its own, and
    switches it off only once some session has called ``st.navigation`` (Streamlit 1.67:
    ``PagesManager.uses_pages_directory`` is set when the first session starts and cleared by ``st.navigation``;
    ``AppTest`` sets it again before every run). Until then a request for a page (``/explore`` reloaded right after
    a server start) runs the page script alone, without app.py: no page config, no reopened run, no readable
    errors, and a navigation listing every file. A page run that way switches the legacy mode off and runs app.py
    in its place, in the same script run (so the widget values of this run, a click included, are kept); app.py
    then runs this page inside its frame.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the legacy mode
        return
    if not getattr(PagesManager, "uses_pages_directory", False):
        return
    PagesManager.uses_pages_directory = False
    app = Path(__file__).resolve().parent.parent / "app.py"
    exec(compile(app.read_text(encoding="utf-8"), str(app), "exec"), {"__name__": "__main__", "__file__": str(app)})
    st.stop()  # this legacy run of the page ends here: app.py has drawn the page


# ---- errors --------------------------------------------------------------------------------------------------
class PageStop(Exception):
    """Ends the current page early (like ``st.stop()``, but app.py still draws the sidebar afterwards)."""


def stop_page() -> None:
    raise PageStop()


@contextlib.contextmanager
def friendly_errors(action: str) -> Iterator[None]:
    """Show any error raised inside as a readable message (FlareError: its sentence; others: short + details)."""
    try:
        yield
    except PageStop:
        raise
    except FlareError as e:
        st.error(str(e), icon=":material/error:")
    except Exception as e:  # never a raw traceback on the page
        logger.exception("%s failed", action)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        st.error(f"{action} failed unexpectedly: {first}. The details below help when reporting it.",
                 icon=":material/error:")
        with st.expander("Details"):
            st.code("".join(traceback.format_exception(e))[-6000:], language="text")


# ---- warm-up -------------------------------------------------------------------------------------------------
def warm_numba(delay_s: float = 3.0) -> None:
    """Compile (or load from NUMBA_CACHE_DIR) UMAP's and HDBSCAN's numba code on a tiny problem.

    Starts after ``delay_s`` so the first page is served before the warm-up competes for the CPU.
    """
    time.sleep(delay_s)
    try:
        import numpy as np
        import umap

        x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        umap.UMAP(n_neighbors=5, n_epochs=20, random_state=0, n_jobs=1).fit(x)
        import hdbscan

        hdbscan.HDBSCAN(min_cluster_size=5).fit(x[:, :2])
        logger.info("numba/UMAP warm-up done")
    except Exception:  # warm-up is an optimisation; the analysis reports real errors itself
        logger.warning("numba/UMAP warm-up failed", exc_info=True)


@st.cache_resource(show_spinner=False)
def start_warmup() -> Optional[threading.Thread]:
    """Start the warm-up once per server process, in the background (FLARE_NO_WARMUP=1 turns it off)."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "flare-workbench" / "numba"))
    Path(os.environ["NUMBA_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
    if os.environ.get("FLARE_NO_WARMUP"):
        return None
    t = threading.Thread(target=warm_numba, name="flare-warmup", daemon=True)
    t.start()
    return t


# ---- configs and cached loading ------------------------------------------------------------------------------
def _stat(path: Optional[str]) -> Optional[list]:
    if not path or str(path).startswith("builtin:") or not os.path.exists(path):
        return None
    s = os.stat(path)
    return [s.st_size, s.st_mtime_ns]


LOAD_FIELDS = ("model", "data", "arch", "data_format", "split", "size", "channels", "mean", "std", "device")


def config_key(config, *, load_only: bool = False) -> str:
    """A short key for a config (an AnalysisConfig or its dict, as in run.json), changing when the model or
    data file changes on disk.

    ``load_only`` keys only what loading the model and data depends on (not the detector's settings).
    """
    d = dict(config) if isinstance(config, dict) else config.to_dict()
    if load_only:
        d = {k: d.get(k) for k in LOAD_FIELDS}
    for name in ("model", "data", "ground_truth"):
        if name in d:
            d[f"{name}_stat"] = _stat(d.get(name))
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tuple(v):
    return tuple(_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


def config_from_meta(meta: dict):
    """The AnalysisConfig a run was made with (from its run.json)."""
    from flare_core.pipeline import AnalysisConfig

    d = dict(meta.get("config") or {})
    if not d.get("model") or not d.get("data"):
        raise FlareError("This run folder does not record its model and data paths, so images cannot be shown.")
    check_run_inputs_allowed(d)  # a run.json is a file: it may name anything
    names = {f.name for f in dataclasses.fields(AnalysisConfig)}
    kw = {k: _tuple(v) for k, v in d.items() if k in names and k != "params"}
    kw["params"] = tuple(sorted((k, _tuple(v)) for k, v in dict(d.get("params") or {}).items()))
    return AnalysisConfig(**kw)


@st.cache_resource(show_spinner=False, max_entries=3)
def _load_cached(key: str, _config):
    from flare_core.pipeline import load_model_and_data

    return load_model_and_data(_config)


def load_config(config) -> tuple:
    """Load (cached per config) the model and dataset a config names and make them the session's."""
    with st.spinner("Loading the model and the dataset…"):
        model, dataset = _load_cached(config_key(config, load_only=True), config)
    check_dataset_files_allowed(dataset)  # a CSV manifest or a link may reach outside the allowed folders
    st.session_state[CONFIG] = config
    st.session_state[MODEL] = model
    st.session_state[DATASET] = dataset
    return model, dataset


def model_and_data(required: bool = True, *, need_model: bool = True) -> tuple:
    """The session's (model, dataset), loading them from the config when needed; (None, None) on failure.

    With ``need_model=False`` a dataset already in the session is returned without loading a model.
    """
    ss = st.session_state
    if ss.get(DATASET) is not None and (ss.get(MODEL) is not None or not need_model):
        return ss.get(MODEL), ss[DATASET]
    if ss.get(CONFIG) is None and current_run() is None:
        if required:
            st.info("Load a model and a dataset first (page Load).", icon=":material/info:")
        return None, None
    with friendly_errors("Loading the model and the dataset"):
        with st.spinner("Reading the analysis settings…"):
            config = session_config()
        model, dataset = load_config(config)
        run = current_run()
        if run is not None:  # the run's flags and scores must point at these images, Grad-CAM at this model
            from flare_core.pipeline import check_inputs_of

            check_inputs_of(run, model=model, dataset=dataset)
        return model, dataset
    ss[MODEL] = ss[DATASET] = None
    return None, None


# ---- the current run -----------------------------------------------------------------------------------------
def last_run_file() -> Path:
    return cache_dir() / "last_run.json"


@st.cache_resource(show_spinner=False, max_entries=16)
def _open_run(path: str, stamp: float) -> RunFolder:
    return RunFolder(path)


def open_run(path: str | Path) -> RunFolder:
    """Open a run folder (cached; reopened when its run.json changes)."""
    p = Path(path)
    stamp = (p / "run.json").stat().st_mtime_ns if (p / "run.json").exists() else 0
    return _open_run(str(p), stamp)


def set_run(path: str | Path, *, config=None) -> RunFolder:
    """Make a run folder the session's current run and remember it across reloads and restarts."""
    resolved = resolve_allowed(path, must_exist=True)
    run = open_run(resolved)
    ss = st.session_state
    old = ss.get(CONFIG)
    meta_cfg = dict(run.meta.get("config") or {})
    new = config if config is not None else (meta_cfg if meta_cfg.get("model") and meta_cfg.get("data") else None)
    same = new is not None and old is not None and config_key(new, load_only=True) == config_key(old, load_only=True)
    if not same:
        ss[MODEL] = ss[DATASET] = None
    # without a given config, the run's own is built from run.json when a page needs the model (no torch import here)
    ss[CONFIG] = config if config is not None else (old if same else None)
    ss[RUN] = str(resolved)
    ss.pop(DEMO_PENDING, None)
    ss.pop(RESTORE_ERROR, None)
    ss[SELECTION] = []
    st.query_params["run"] = str(resolved)
    try:
        write_json(last_run_file(), {"run": str(resolved), "opened": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except OSError:
        logger.warning("could not remember the last run", exc_info=True)
    return run


def close_run() -> None:
    ss = st.session_state
    ss.pop(RUN, None)
    ss[SELECTION] = []
    if "run" in st.query_params:
        del st.query_params["run"]
    with contextlib.suppress(OSError):
        last_run_file().unlink()


RESTORE_ERROR = "_restore_error"  # session: why the run named in the URL or by `flare dashboard RUN` did not open


def restore_run() -> bool:
    """On a new session: reopen the run named in the URL (``?run=``), else ``FLARE_OPEN_RUN`` (set by
    ``flare dashboard --run``), else the last one opened on this server.

    A new session that finds nothing to reopen is marked to load the built-in demo (unless FLARE_NO_DEMO=1):
    see :func:`autoload_demo`. Returns True for that case.
    """
    ss = st.session_state
    if ss.get("_restored"):
        return False
    ss["_restored"] = True
    if ss.get(RUN) or ss.get(CONFIG) is not None:
        return False
    candidate = st.query_params.get("run") or os.environ.get("FLARE_OPEN_RUN")
    named = bool(candidate)  # asked for by the URL or `flare dashboard RUN`, not just the last one opened here
    if not candidate and last_run_file().exists():
        with contextlib.suppress(OSError, ValueError, json.JSONDecodeError):
            candidate = json.loads(last_run_file().read_text(encoding="utf-8")).get("run")
    if candidate:
        try:
            set_run(candidate)
            return False
        except FlareError as e:
            logger.info("not reopening %s: %s", candidate, e)
            if named:
                ss[RESTORE_ERROR] = f"The run {candidate} was not reopened: {e}"
    if os.environ.get("FLARE_NO_DEMO"):
        return False
    ss[DEMO_PENDING] = True
    return True


# ---- the built-in demo ---------------------------------------------------------------------------------------
DEMO_AUTO = "demo_auto"  # session flag: the demo was loaded automatically (nothing else was open)


def start_demo(*, auto: bool = False) -> None:
    """Prepare (or reuse) the built-in demo scenario and load its model and data into the session."""
    from flare_core.demo import prepare_demo
    from flare_core.pipeline import AnalysisConfig

    with st.spinner("Preparing the built-in demo (the first time takes a little longer)…"):
        scenario = prepare_demo()
    config = AnalysisConfig(model=str(scenario.model_path), data=str(scenario.data_path),
                            ground_truth=str(scenario.ground_truth_path))
    why_no_run = st.session_state.get(RESTORE_ERROR) if auto else None  # opened instead of the named run: still said
    use_config(config)
    if why_no_run:
        st.session_state[RESTORE_ERROR] = why_no_run
    st.session_state[DEMO] = scenario
    st.session_state[DEMO_AUTO] = auto


DEMO_PENDING = "_demo_pending"  # session flag: load the built-in demo once this run has drawn the page


def autoload_demo(notice) -> bool:
    """Load the built-in demo for a fresh session that has nothing to reopen (FLARE_NO_DEMO=1 turns this off),
    so the dashboard opens on something to analyse. Called by app.py after the page is drawn (so the page shows
    at once and says the demo is on its way); returns True when it loaded (app.py then reruns to show it). A
    failure is a warning in ``notice`` (a placeholder at the top of the page): the Load page still works."""
    ss = st.session_state
    if not ss.get(DEMO_PENDING):
        return False
    try:
        with notice.container():
            start_demo(auto=True)
        return True
    except Exception as e:  # not fatal: the user can still load data or retry the demo on the Load page
        ss.pop(DEMO_PENDING, None)  # (a rerun interrupting the load leaves it pending: the next run loads it)
        logger.warning("could not load the built-in demo", exc_info=True)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        notice.warning(f"The built-in demo could not be loaded ({first}). Load a model and a dataset on the Load "
                       "page.", icon=":material/warning:")
        return False


def session_config():
    """The session's AnalysisConfig: the loaded one, else the current run's (from run.json); FlareError if none."""
    config = st.session_state.get(CONFIG)
    if config is not None:
        return config
    run = current_run()
    if run is None:
        raise FlareError("Load a model and a dataset first (page Load).")
    config = config_from_meta(run.meta)
    st.session_state[CONFIG] = config
    return config


def current_run() -> Optional[RunFolder]:
    path = st.session_state.get(RUN)
    if not path:
        return None
    try:
        return open_run(path)
    except FlareError:
        st.session_state.pop(RUN, None)
        return None


def require_run() -> RunFolder:
    """The current run, or an explanation and a stop of the page when there is none."""
    run = current_run()
    if run is None:
        st.info("No analysis is open yet: run one on the Analyse page, or reopen a run folder on the Load page.",
                icon=":material/info:")
        st.page_link(PAGES["analyse"], label="Go to Analyse", icon=":material/play_arrow:")
        stop_page()
    return run


def detector_label(name: str, *, long: bool = False) -> str:
    """A detector's display name: short ('FLARE', 'AC') from its key, or the registry's label with ``long``
    (the registry imports scikit-learn, so pages that do not need it stay fast)."""
    if long:
        try:
            from flare_core.detectors.registry import DETECTORS

            return DETECTORS[name].label if name in DETECTORS else name
        except Exception:
            return name
    return str(name).upper()


def class_name(run: RunFolder, label: int) -> str:
    return run.class_name(label)


# ---- the sidebar ---------------------------------------------------------------------------------------------
def sidebar() -> None:
    run = current_run()
    with st.sidebar:
        st.markdown("### Current analysis")
        if run is None:
            st.caption("None open yet.")
        else:
            n_flag = int(run.flagged().sum())
            n_rem = int(run.removal_mask().sum())
            st.markdown(f"**{Path(str(run.meta.get('dataset', {}).get('path', run.path))).name}**  \n"
                        f"{run.n_samples:,} samples · {len(run.classes)} classes")
            # side by side while the numbers fit the narrow columns (up to 9,999); one above the other past that
            c1, c2 = st.columns(2) if max(n_flag, n_rem) < 10_000 else (st.container(), st.container())
            c1.metric("flagged", f"{n_flag:,}")
            c2.metric("to remove", f"{n_rem:,}")
            st.caption(f"Run folder: `{run.path}`  \nDecisions are saved there at once.")
            if st.button("Close this analysis", key="close_run"):
                close_run()
                st.rerun()
        demo = st.session_state.get(DEMO)
        cfg = st.session_state.get(CONFIG)
        d = cfg.to_dict() if cfg is not None else (dict(run.meta.get("config") or {}) if run is not None else {})
        if d.get("model") and d.get("data"):
            data = str(d["data"])
            st.caption(f"Model: `{Path(str(d['model'])).name}`  \nData: `{data if data.startswith('builtin:') else Path(data).name}`"
                       + (f"  \nScenario: {demo.title}" if demo is not None else ""))


def image_grid(images, captions, *, columns: int = 8, min_side: int = 96) -> None:
    """Show uint8 images in a grid (enlarged with nearest neighbour)."""
    from flare_core.plots import upscale

    cols = st.columns(columns)
    for j, (img, cap) in enumerate(zip(images, captions)):
        cols[j % columns].image(upscale(img, min_side), caption=cap, width="stretch")


# ---- small input parsing (what users type into text fields) --------------------------------------------------
def parse_numbers(text: str, what: str, *, count: Optional[tuple] = None, kind=float) -> Optional[tuple]:
    """'0.5, 0.5, 0.5' -> (0.5, 0.5, 0.5); empty -> None; raises FlareError with a usable sentence."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        values = tuple(kind(v) for v in text.replace(";", ",").replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise FlareError(f"{what} must be numbers separated by commas, like {'28, 28' if kind is int else '0.5, 0.5, 0.5'}.") from None
    if count is not None and len(values) not in count:
        raise FlareError(f"{what} needs {' or '.join(map(str, count))} numbers, got {len(values)}.")
    return values


def use_config(config) -> tuple:
    """Load a config's model and data; an open run made from other inputs is closed (and a pending automatic
    demo is not loaded any more)."""
    st.session_state.pop(DEMO_PENDING, None)
    st.session_state.pop(RESTORE_ERROR, None)
    model, dataset = load_config(config)
    run = current_run()
    if run is not None:
        same = config_key(dict(run.meta.get("config") or {}), load_only=True) == config_key(config, load_only=True)
        if not same:
            close_run()
    return model, dataset
