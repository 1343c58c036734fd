"""Explore: per-class UMAP coloured by HDBSCAN cluster, the global view, flagged counts, lasso selection."""
import numpy as np
import streamlit as st

from flare_core import plots
from pages import _shared as shared

shared.require_app_router()  # before anything else: never run as a legacy pages/ page

ss = st.session_state
run = shared.require_run()
det = run.detectors()[0]
det_label = shared.detector_label(det)
df = run.manifest
labels = df["label"].to_numpy()
flagged = run.flagged()
removal = run.removal_mask()
k = len(run.classes)

st.title("Explore")
c = st.columns(4)
c[0].metric("samples", f"{run.n_samples:,}")
c[1].metric(f"flagged by {det_label}", f"{int(flagged.sum()):,}")
c[2].metric("analyst overrides", f"{len(run.decisions()):,}")
c[3].metric("to remove", f"{int(removal.sum()):,}")
st.plotly_chart(
    plots.flagged_bar(run.classes, np.bincount(labels, minlength=k), np.bincount(labels[flagged], minlength=k),
                      np.bincount(labels[removal], minlength=k), detector_label=f"flagged by {det_label}", height=280),
    theme=None, key="ex_bar",
)


def _store_selection(chart_key: str, fig) -> None:
    event = ss.get(chart_key)
    points = event.selection.points if event is not None else []
    ss[shared.SELECTION] = plots.selected_indices(fig, points)


def _build_class_figure(run_, label: int):
    v = run_.class_view(label)
    if v is None:
        return None
    return plots.class_scatter(
        v.embedding, v.clusters, v.indices, run_.flagged()[v.indices], scores=run_.scores()[v.indices],
        sources=run_.manifest["source"].to_numpy()[v.indices], stability=v.stability,
        title=f"Class {label}: {shared.class_name(run_, label)} — UMAP coloured by HDBSCAN cluster",
        note=v.sampling_note(),
        detector_label=f"flagged by {shared.detector_label(run_.detectors()[0])}",
    )


@st.cache_resource(show_spinner=False, max_entries=24)
def _class_figure(run_path: str, label: int, _run):
    return _build_class_figure(_run, label)


def _class_label(j: int, flag_counts) -> str:
    return f"{j}: {shared.class_name(run, j)} — {flag_counts[j]:,} flagged of {(labels == j).sum():,}"


@st.cache_resource(show_spinner="Drawing every class's view…", max_entries=4)
def _class_menu_figure(run_path: str, with_views: tuple, default: int, _run):
    """Every class's view in one figure, switched by the plot's own menu (in the browser, without a rerun)."""
    flag_counts = np.bincount(labels[_run.flagged()], minlength=k)
    figs = [(_class_label(j, flag_counts), _build_class_figure(_run, j)) for j in with_views]
    return plots.class_menu([(lab, f) for lab, f in figs if f is not None], default=list(with_views).index(default))


@st.cache_resource(show_spinner=False, max_entries=4)
def _global_figure(run_path: str, _run):
    emb = _run.embedding()
    if emb is None:
        return None
    return plots.global_scatter(emb, _run.manifest["label"].to_numpy(), _run.classes, _run.flagged(),
                                title=f"All classes — {shared.detector_label(_run.detectors()[0])} embedding",
                                detector_label="flagged")


@st.fragment
def views_and_selection() -> None:
    """The scatter views and the selection grid: a selection (or a server-side class switch) reruns only this
    part; its errors are shown like the page's own, also when only the fragment reruns."""
    try:
        with shared.friendly_errors("The Explore page"):
            _views_and_selection()
    except shared.PageStop:
        pass


def _views_and_selection() -> None:
    view = st.radio("View", ["One class", "All classes"], horizontal=True, key="ex_view", label_visibility="collapsed")
    flag_counts = np.bincount(labels[flagged], minlength=k)
    stamp = f"{run.path}@{run.meta.get('created', '')}"
    if view == "One class":
        with_views = run.class_labels_with_views()
        if not with_views:
            st.warning("This run has no per-class views (it was run without them); use the global view.")
        else:
            default = int(np.argmax(flag_counts)) if flag_counts.any() else with_views[0]
            default = default if default in with_views else with_views[0]
            in_browser = (run.n_samples <= plots.CLASS_MENU_MAX_POINTS
                          and len(with_views) <= plots.CLASS_MENU_MAX_CLASSES)
            if in_browser:
                # every class is sent once and the plot's own menu switches between them in the browser: no rerun,
                # and the plot (with its WebGL context) is kept, so a switch costs a fraction of a new plot
                fig = _class_menu_figure(stamp, tuple(with_views), default, run)
                chart_key = "ex_chart_classes"
                hint = "Pick the class with the menu above the plot. "
            else:  # too many points to send at once: the server draws the chosen class
                if ss.get("ex_class") not in with_views:
                    ss["ex_class"] = default
                label = st.selectbox("Class", with_views, key="ex_class",
                                     format_func=lambda j: _class_label(j, flag_counts))
                fig = _class_figure(stamp, int(label), run)
                chart_key = "ex_chart_class"
                hint = ""
            st.plotly_chart(fig, key=chart_key, on_select=lambda: _store_selection(chart_key, fig),
                            selection_mode=("box", "lasso", "points"), theme=None, config={"displaylogo": False})
            space = {"penultimate": "the penultimate features (where FLARE's latent stage found the split)",
                     "abnormality": "FLARE's per-layer abnormality (the chosen layers)"}.get(
                (run.meta.get("features") or {}).get("views_on") or "", "")
            st.caption(hint + "Drag a box or a lasso (tools at the top right of the plot) to select samples; "
                              "✕ marks flagged ones." + (f" Each class is embedded from {space}." if space else ""))
    else:
        fig = _global_figure(stamp, run)
        if fig is None:
            st.warning("This run has no global embedding.")
        else:
            st.plotly_chart(fig, key="ex_chart_global", on_select=lambda: _store_selection("ex_chart_global", fig),
                            selection_mode=("box", "lasso", "points"), theme=None, config={"displaylogo": False})

    # ---- the selection ------------------------------------------------------------------------------------------------
    selection = [i for i in ss.get(shared.SELECTION, []) if 0 <= i < run.n_samples]
    st.subheader(f"Selection ({len(selection):,} samples)")
    if not selection:
        st.caption("Nothing selected yet.")
    else:
        def _inspect():
            ss["inspect_source"] = "selection"
            ss["inspect_page"] = 1

        b = st.columns(5)
        if b[0].button("Inspect with Grad-CAM", type="primary", key="ex_inspect", on_click=_inspect,
                       icon=":material/visibility:"):
            st.switch_page(shared.PAGES["inspect"])
        for col, label_, key, decision, icon in ((b[1], "Mark all: remove", "ex_remove", "remove", ":material/delete:"),
                                                 (b[2], "Mark all: keep", "ex_keep", "keep", ":material/check:"),
                                                 (b[3], "Clear their marks", "ex_clear_marks", None, None)):
            if col.button(label_, key=key, icon=icon):
                run.set_decisions(selection, decision)
                ss["decisions_version"] = ss.get("decisions_version", 0) + 1
                st.rerun()  # the whole page: the counts above change
        b[4].button("Clear selection", key="ex_clear_sel", on_click=lambda: ss.__setitem__(shared.SELECTION, []))
        n_rem = int(run.removal_mask()[selection].sum())
        st.caption(f"{int(flagged[selection].sum()):,} flagged · {n_rem:,} currently to be removed")
        _, dataset = shared.model_and_data(required=False, need_model=False)
        if dataset is None:
            st.caption("The images appear once the dataset is loaded (page Load).")
        else:
            shown = selection[:48]
            caps = [f"#{i} · c{df['cluster'].iat[i]}" + (" ✕" if flagged[i] else "") for i in shown]
            shared.image_grid(dataset.images[shown], caps, columns=12, min_side=56)
            if len(selection) > len(shown):
                st.caption(f"Showing the first {len(shown)}; inspect them all on the Inspect page.")


views_and_selection()
