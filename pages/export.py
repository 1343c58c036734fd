"""Export: the purified dataset (flags + the analyst's overrides) to a server folder or as a zip; manifest; report."""
import shutil
import tempfile
from pathlib import Path

import streamlit as st

from flare_core import server_paths
from flare_core.report import build_report, manifest_with_decisions
from pages import _shared as shared

shared.require_app_router()  # before anything else: never run as a legacy pages/ page

ss = st.session_state
DEFERRED_MANIFEST_ROWS = 200_000
run = shared.require_run()
st.title("Export")
removal = run.removal_mask()
dec = run.decisions()
det_label = shared.detector_label(run.detectors()[0])
c = st.columns(4)
c[0].metric("samples", f"{run.n_samples:,}")
c[1].metric("kept", f"{int((~removal).sum()):,}")
c[2].metric("removed", f"{int(removal.sum()):,}")
c[3].metric("analyst overrides", f"{len(dec):,}")
st.caption(f"Removed = flagged by {det_label}, except samples the analyst marked keep, plus samples marked remove. "
           "The source data is never modified; the export is a new copy in the input's own format.")
src_name = Path(str(run.meta.get("dataset", {}).get("path", "dataset"))).stem or "dataset"

# ---- purified dataset -------------------------------------------------------------------------------------------
st.subheader("Purified dataset")
tab_server, tab_zip = st.tabs(["Write to a server folder", "Download as zip"])
with tab_server:
    default_out = str(Path(run.path) / "purified")
    out_txt = st.text_input("Output folder on the server", value=default_out, key="export_path")
    overwrite = st.checkbox("Replace the folder if it already exists", key="export_overwrite",
                            help="Only an earlier export is replaced (it holds the file .flare-export.json): a folder "
                                 "FLARE did not write is never deleted.")
    if st.button("Write the purified dataset", type="primary", key="export_write", icon=":material/save:"):
        with shared.friendly_errors("The export"):
            from flare_core.pipeline import export_purified

            out = server_paths.resolve_allowed(out_txt)
            _, dataset = shared.model_and_data(need_model=False)
            if dataset is not None:
                with st.spinner("Writing the purified dataset…"):
                    written = export_purified(run, out, dataset=dataset, overwrite=overwrite)
                ss["export_written"] = (str(run.path), str(written))
    w = ss.get("export_written")
    if w and w[0] == str(run.path):
        st.success(f"Wrote {int((~removal).sum()):,} samples to `{w[1]}`.", icon=":material/check_circle:")

with tab_zip:
    if st.button("Prepare the zip", key="export_zip_prepare", icon=":material/folder_zip:"):
        with shared.friendly_errors("Preparing the zip"):
            from flare_core.pipeline import export_purified

            _, dataset = shared.model_and_data(need_model=False)
            if dataset is not None:
                with st.spinner("Writing and compressing the purified dataset…"):
                    server_paths.cache_dir().mkdir(parents=True, exist_ok=True)
                    tmp = Path(tempfile.mkdtemp(prefix="flare-export-", dir=server_paths.cache_dir()))
                    try:
                        export_purified(run, tmp / f"{src_name}-purified", dataset=dataset)
                        ss["export_zip"] = (str(run.path), server_paths.zip_folder(tmp / f"{src_name}-purified"))
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
    z = ss.get("export_zip")
    if z and z[0] == str(run.path):
        st.download_button(f"Download {src_name}-purified.zip ({len(z[1]) / 1e6:.1f} MB)", z[1],
                           file_name=f"{src_name}-purified.zip", mime="application/zip", key="export_zip_download",
                           icon=":material/download:", on_click="ignore")

# ---- manifest and report ------------------------------------------------------------------------------------------
st.subheader("Manifest and report")
m1, m2 = st.columns(2)
with m1:
    st.caption("One row per sample: index, source, label, flagged, score, cluster, the analyst's decision and "
               "whether it is removed.")
    # A million rows are 10 s and 120 MB of CSV on every visit: past DEFERRED_MANIFEST_ROWS the CSV is made when the
    # button is clicked (Streamlit's callable data). Not below: a click that lands just after a rerun can find the
    # callable gone ("Deferred file not found", seen once in the browser test), while bytes are kept for a while.
    manifest_csv = lambda: manifest_with_decisions(run).to_csv(index=False).encode("utf-8")  # noqa: E731
    st.download_button("Download manifest.csv", manifest_csv if run.n_samples > DEFERRED_MANIFEST_ROWS else manifest_csv(),
                       file_name="manifest.csv", mime="text/csv", key="export_manifest", icon=":material/table:",
                       on_click="ignore")
with m2:
    st.caption("A self-contained HTML page for the review meeting: counts, scatter plots, example flagged images "
               "with Grad-CAM overlays, parameters and versions. It opens offline.")
    if st.button("Build the HTML report", key="export_report_build", icon=":material/description:"):
        with shared.friendly_errors("Building the report"):
            model, dataset = shared.model_and_data(required=False, need_model=False)
            with st.spinner("Building the report…"):
                path = build_report(run, Path(run.path) / "report.html", dataset=dataset, model=model)
            ss["export_report"] = (str(run.path), path.read_bytes())
    r = ss.get("export_report")
    if r and r[0] == str(run.path):
        st.download_button(f"Download report.html ({len(r[1]) / 1e6:.1f} MB)", r[1], file_name=f"{src_name}-flare-report.html",
                           mime="text/html", key="export_report_download", icon=":material/download:", on_click="ignore")
