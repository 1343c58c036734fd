"""FLARE Workbench dashboard: ``streamlit run app.py`` (binds to 127.0.0.1, see .streamlit/config.toml).

Pages: Load → Analyse → Explore → Inspect → Export (→ Evaluate when the ground truth is known), one script each
in ``pages/``, routed by ``st.navigation`` below (each page first calls ``shared.require_app_router()``, so a page is
never run on its own by Streamlit's legacy ``pages/`` discovery; see there).
All computation lives in ``flare_core``; the pages only call it and show the results.
"""
import os
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "flare-workbench" / "numba"))

import streamlit as st  # noqa: E402

from pages import _shared as shared  # noqa: E402

st.set_page_config(page_title="FLARE Workbench", page_icon=":material/shield:", layout="wide")
shared.start_warmup()
shared.restore_run()  # a new session: reopen a run, or else mark the built-in demo to be loaded below
if st.session_state.get(shared.RESTORE_ERROR):  # above the page, until something else is opened or loaded
    st.warning(st.session_state[shared.RESTORE_ERROR], icon=":material/warning:")
notice = st.empty()  # where the demo's loading (or its failure) is shown, above the page

nav_pages = [
    st.Page(shared.PAGES["load"], title="Load", icon=":material/upload_file:", default=True),
    st.Page(shared.PAGES["analyse"], title="Analyse", icon=":material/play_circle:"),
    st.Page(shared.PAGES["explore"], title="Explore", icon=":material/scatter_plot:"),
    st.Page(shared.PAGES["inspect"], title="Inspect", icon=":material/visibility:"),
    st.Page(shared.PAGES["export"], title="Export", icon=":material/download:"),
]
_run = shared.current_run()
if _run is not None and _run.ground_truth() is not None:
    nav_pages.append(st.Page(shared.PAGES["evaluate"], title="Evaluate", icon=":material/fact_check:"))

page = st.navigation(nav_pages)
try:
    with shared.friendly_errors(f"The {page.title} page"):
        page.run()
except shared.PageStop:
    pass
shared.sidebar()  # after the page (also when it stopped early), so it shows what the page just changed
if shared.autoload_demo(notice):  # after the page is drawn, so the first page shows at once; then show the demo
    st.rerun()
