"""Analyse: run FLARE (and optional baselines) with a progress bar per stage; results cached per configuration."""
import dataclasses
import json
import time

import numpy as np
import pandas as pd
import streamlit as st

from flare_core import plots, report, server_paths
from pages import _shared as shared

shared.require_app_router()  # before anything else: never run as a legacy pages/ page

ss = st.session_state
STAGE_LABELS = {
    "load": "Loading model and data", "features": "Hidden-layer statistics (with the penultimate features: one pass)",
    "pooled": "Penultimate features and logits", "subspace-search": "Subspace search",
    "latent": "Latent stage (per class, penultimate features)",
    "umap": "UMAP embedding", "hdbscan": "HDBSCAN clustering", "baselines": "Baseline detectors",
    "views": "Per-class views", "export": "Export", "write": "Writing the run folder",
    "shortcut-probe": "Shortcut probe (does the model obey smoothing or sharpening as a trigger?)",
    "shortcut-test": "Shortcut counter test", "mode-trigger": "Minority modes: trigger test",
    "flag-trigger": "Do the flagged samples share a trigger?",
}
HIDDEN_PARAMS = {"random_state", "progress", "n_jobs", "verbose", "mode"}

st.title("Analyse")
config = ss.get(shared.CONFIG)
if config is None and shared.current_run() is not None:
    with shared.friendly_errors("Reading the run's settings"):
        config = shared.session_config()
if config is None:
    st.info("Load a model and a dataset first, or start the built-in demo.", icon=":material/info:")
    st.page_link(shared.PAGES["load"], label="Go to Load", icon=":material/upload_file:")
    shared.stop_page()

from flare_core.detectors.registry import DETECTORS  # noqa: E402

names = sorted(DETECTORS)
st.caption(f"Model `{config.model}` · data `{config.data}`"
           + (f" · ground truth `{config.ground_truth}`" if config.ground_truth else ""))
c1, c2 = st.columns(2)
detector = c1.selectbox("Detector", names, index=names.index("flare") if "flare" in names else 0,
                        format_func=lambda k: DETECTORS[k].label, key="an_detector",
                        help="\n\n".join(f"**{DETECTORS[k].label}**: {DETECTORS[k].description}" for k in names))
others = [k for k in names if k != detector]
baselines = c2.multiselect("Compare with (optional)", others, format_func=lambda k: DETECTORS[k].label,
                           default=[k for k in ("ac", "ss") if k in others] if config.ground_truth else [],
                           key="an_baselines", help="Baselines run on the same features; the Evaluate page compares them "
                                                    "when the ground truth is known.")


def _param_widgets(name: str) -> dict:
    """Inputs for the detector's own parameters (defaults from the estimator); returns only changed ones."""
    try:
        defaults = DETECTORS[name].factory().get_params()
    except Exception:
        defaults = {}
    changed = {}
    cols = st.columns(3)
    shown = [(k, v) for k, v in sorted(defaults.items()) if k not in HIDDEN_PARAMS]
    for j, (k, v) in enumerate(shown):
        col = cols[j % 3]
        key = f"an_param_{name}_{k}"
        if isinstance(v, bool):
            new = col.checkbox(k, value=v, key=key)
        elif isinstance(v, int):
            new = int(col.number_input(k, value=v, step=1, key=key))
        elif isinstance(v, float):
            new = float(col.number_input(k, value=v, format="%.4g", key=key))
        else:
            txt = col.text_input(k, value="" if v is None else (v if isinstance(v, str) else json.dumps(v)),
                                 placeholder="automatic" if v is None else None, key=key)
            new = None if not txt.strip() else (txt if isinstance(v, str) else _json_or_text(txt))
        if new != v:
            changed[k] = new
    return changed


def _json_or_text(txt: str):
    try:
        return json.loads(txt)
    except json.JSONDecodeError:
        return txt


with st.expander("Advanced settings"):
    st.caption(DETECTORS[detector].description)
    params = _param_widgets(detector)
    a1, a2, a3 = st.columns(3)
    seed = int(a1.number_input("Random seed", value=int(config.seed), step=1, key="an_seed"))
    batch_size = int(a2.number_input("Batch size (feature pass)", min_value=1, value=int(config.batch_size), step=32,
                                     key="an_batch"))
    views = a3.checkbox("Per-class views (for Explore)", value=True, key="an_views")
    recompute = st.checkbox("Recompute even when this exact analysis is cached", value=False, key="an_recompute")

analysis = dataclasses.replace(config, detector=detector, baselines=tuple(baselines), seed=seed, batch_size=batch_size,
                               views=views, params=tuple(sorted(params.items())))
out_dir = server_paths.cache_dir() / "runs" / shared.config_key(analysis)
cached = (out_dir / "run.json").exists() and (out_dir / "manifest.csv").exists()


class StageProgress:
    """A progress bar per stage inside a status box; updates at most every 0.2 s per stage."""

    def __init__(self, box):
        self.box, self.bars, self.last = box, {}, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage in self.bars and done < total and now - self.last.get(stage, 0.0) < 0.2:
            return
        self.last[stage] = now
        label = STAGE_LABELS.get(stage, stage)
        if stage not in self.bars:
            self.bars[stage] = self.box.progress(0.0, text=label)
            self.box.update(label=f"{label}…")
        frac = min(1.0, done / total) if total else 0.0
        self.bars[stage].progress(frac, text=f"{label} — {done:,}/{total:,}" if total > 1 else label)


label = "Open the cached result" if cached and not recompute else "Run the analysis"
if st.button(label, type="primary", icon=":material/play_arrow:", key="an_run"):
    with shared.friendly_errors("The analysis"):
        if cached and not recompute:
            shared.set_run(out_dir, config=analysis)
            ss["an_message"] = "Opened the cached result of this exact analysis: nothing was recomputed."
            st.rerun()  # the page list changes (Evaluate) when the run has a ground truth
        else:
            from flare_core import pipeline

            model, dataset = shared.model_and_data()
            if dataset is None:
                shared.stop_page()
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            box = st.status("Running the analysis…", expanded=True)
            t0 = time.perf_counter()
            run = pipeline.run_analysis(analysis, out_dir, progress=StageProgress(box), overwrite=True,
                                        model=model, dataset=dataset)
            box.update(label=f"Analysis finished in {time.perf_counter() - t0:.1f} s", state="complete", expanded=False)
            shared.set_run(run.path, config=analysis)
            ss["an_message"] = f"Analysis finished in {time.perf_counter() - t0:.1f} s."
            st.rerun()  # the page list changes (Evaluate) when the run has a ground truth

run = shared.current_run()
if run is not None:
    st.divider()
    if ss.get("an_message"):
        st.success(ss.pop("an_message"), icon=":material/check_circle:")
    det = run.meta.get("detector", {}).get("name", "flare")
    res = run.meta.get("result", {})
    st.subheader(f"Result: {shared.detector_label(det, long=True)}")
    flagged = run.flagged()
    c = st.columns(4)
    c[0].metric("samples", f"{run.n_samples:,}")
    c[1].metric("flagged", f"{int(flagged.sum()):,}", help="Samples the detector considers poisoned.")
    c[2].metric("flagged share", f"{100 * flagged.mean():.2f} %")
    c[3].metric("layers used (subspace)", res.get("subspace") if res.get("subspace") is not None else "–")
    if not flagged.any():
        st.info("The detector found no separated group of samples: nothing is flagged. That is not proof of a clean "
                "set: a backdoor the model did not learn leaves its poison as samples the model cannot fit. Look at "
                "the Inspect page's *Highest scores*"
                + (" and *Least fitted by the model*" if run.losses() is not None else "") + " lists.",
                icon=":material/info:")
    sentence, latent_tbl = report.how_found(run)
    wide = "" if flagged.any() else report.not_poison_sentence(report.detector_report(run), run.classes)
    if sentence and flagged.any():
        st.caption(sentence)
    elif wide:
        st.warning(wide.strip(), icon=":material/call_split:")
    triggers = report.trigger_sentence(run)
    if triggers:  # the flagged groups' trigger test; the difference images are on the Inspect page
        st.caption(triggers + " The differences are on the Inspect page.")
    if latent_tbl is not None:
        with st.expander("Latent stage: classes that split in their penultimate features"):
            st.dataframe(latent_tbl, hide_index=True)
    check_tbl = report.cross_check_table(run)
    if check_tbl is not None:
        with st.expander("Per-layer groups, cross-checked in the penultimate features"):
            st.dataframe(check_tbl, hide_index=True)
    labels = run.manifest["label"].to_numpy()
    k = len(run.classes)
    st.plotly_chart(plots.flagged_bar(run.classes, np.bincount(labels, minlength=k), np.bincount(labels[flagged], minlength=k),
                                      detector_label=f"flagged by {shared.detector_label(det)}"),
                    theme=None, key="an_bar")
    with st.expander("Evidence, parameters and timings"):
        st.json(run.meta.get("detector", {}), expanded=False)
        t = run.meta.get("timings") or {}
        if t:
            st.dataframe(pd.DataFrame({"stage": list(t), "seconds": list(t.values())}), hide_index=True)
    st.page_link(shared.PAGES["explore"], label="Next: explore the classes", icon=":material/arrow_forward:")
