"""Inspect: flagged (or selected) samples next to their Grad-CAM overlays; keep/remove decisions saved at once."""
import hashlib

import numpy as np
import streamlit as st

from flare_core import plots
from pages import _shared as shared

shared.require_app_router()  # before anything else: never run as a legacy pages/ page

ss = st.session_state
PAGE_SIZE = 8
MEAN_CAM_SAMPLES = 64

run = shared.require_run()
st.title("Inspect")
model, dataset = shared.model_and_data()
if model is None or dataset is None:
    shared.stop_page()
if len(dataset) != run.n_samples:
    st.error(f"The loaded dataset has {len(dataset):,} samples but this run analysed {run.n_samples:,}; "
             "load the dataset the run was made from.")
    shared.stop_page()

from flare_core import report  # noqa: E402
from flare_core.detectors.tail_groups import strongest_other_class  # noqa: E402
from flare_core.features.mode_trigger import difference_image  # noqa: E402
from flare_core.gradcam import METHODS, default_target_layer, gradcam, list_cam_layers, overlay  # noqa: E402

det = run.detectors()[0]
det_label = shared.detector_label(det)
df = run.manifest
labels = df["label"].to_numpy()
flagged = run.flagged()
scores = run.scores()
version = ss.get("decisions_version", 0)
model_key = f"{model.sha256 or id(model)}:{model.path}"


@st.cache_resource(show_spinner=False, max_entries=8)
def _layers(key: str, _model) -> tuple:
    return tuple(list_cam_layers(_model)), default_target_layer(_model)


@st.cache_data(show_spinner=False, max_entries=64)
def _cams(key: str, indices: tuple, method: str, layer: str, _model, _images) -> tuple:
    return gradcam(_model, _images, target_layer=layer, method=method, return_logits=True)


@st.cache_data(show_spinner=False, max_entries=16)
def _group_trigger(key: str, digest: str, _model, _dataset, _indices) -> tuple:
    """The trigger test of the shown samples (records, differences), keyed on the model and a digest of them."""
    from flare_core.features.mode_trigger import flagged_group_triggers

    mask = np.zeros(len(_dataset), dtype=bool)
    mask[np.asarray(_indices, dtype=np.int64)] = True
    out = flagged_group_triggers(_model, _dataset, mask)
    return out.classes, out.differences


def _difference_grid(diffs: dict, what: str) -> None:
    """Each class's mean image difference (grey = none) in a fixed six-column grid."""
    cols = st.columns(6)  # fixed: one class does not fill the page
    for k, (c, d) in enumerate(sorted(diffs.items())):
        cols[k % 6].image(plots.upscale(difference_image(d), 112), width="stretch",
                          caption=f"{shared.class_name(run, c)}: {what} minus the rest")


def _bump() -> None:
    ss["decisions_version"] = ss.get("decisions_version", 0) + 1


def _decide(indices, decision) -> None:
    run.set_decisions([int(i) for i in indices], decision)
    _bump()


def _on_radio(i: int, key: str) -> None:
    choice = ss[key]
    run.set_decisions([i], None if choice == "auto" else choice)


# ---- which samples --------------------------------------------------------------------------------------------
SOURCES = {"flagged": f"Flagged by {det_label}", "removal": "Marked for removal", "selection": "Selection from Explore",
           "cluster": "A cluster of a class", "ranked": "Highest scores"}
losses = run.losses()
if losses is not None:
    SOURCES["unfitted"] = "Least fitted by the model"
noise = run.label_noise()
if noise is not None and noise.any():
    SOURCES["label_noise"] = "Likely mislabelled"
if ss.get("inspect_source") not in SOURCES:
    ss["inspect_source"] = "flagged"
source = st.radio("Show", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="inspect_source")
if source == "flagged":
    idx = np.flatnonzero(flagged)
elif source == "removal":
    idx = np.flatnonzero(run.removal_mask())
elif source == "selection":
    idx = np.array([i for i in ss.get(shared.SELECTION, []) if 0 <= i < run.n_samples], dtype=np.int64)
elif source == "ranked":
    n_top = st.number_input("How many", min_value=1, max_value=run.n_samples, value=min(50, run.n_samples), step=10,
                            key="inspect_top_n")
    idx = np.argsort(-scores, kind="stable")[: int(n_top)]
    rule = run.score_rule()
    st.caption("Every sample, highest score first, flagged or not." + (f" {det_label}'s score: {rule}." if rule else ""))
elif source == "unfitted":
    n_top = st.number_input("How many", min_value=1, max_value=run.n_samples, value=min(50, run.n_samples), step=10,
                            key="inspect_unfitted_n")
    idx = np.argsort(-losses, kind="stable")[: int(n_top)]
    st.caption("The samples whose label the model fits worst (highest loss), flagged or not. Poison of a backdoor "
               "the model did not learn sits here, where FLARE, which reads what the model learnt, does not see it; "
               "so does label noise. Their next class after the label is what the model sees in them.")
elif source == "label_noise":
    idx = np.flatnonzero(noise)
    idx = idx[np.argsort(-losses[idx], kind="stable")] if losses is not None else idx
    st.caption(f"{len(idx):,} samples that stood apart in their class but that the model classifies as other "
               "classes, many different ones or the same ones across many classes: mislabelled images, not a "
               "backdoor's poison, so they are not "
               "flagged (least fitted first). Check their labels; *Remove all* drops them from the export.")
else:
    with_views = run.class_labels_with_views()
    cc1, cc2 = st.columns(2)
    label = cc1.selectbox("Class", with_views or sorted(set(labels.tolist())), key="inspect_class",
                          format_func=lambda j: f"{j}: {shared.class_name(run, j)}")
    v = run.class_view(label)
    if v is not None:
        ids, counts = np.unique(v.clusters, return_counts=True)
        cid = cc2.selectbox("Cluster", ids.tolist(), key="inspect_cluster",
                            format_func=lambda c: f"{'noise' if c < 0 else f'cluster {c}'} ({counts[ids == c][0]} samples)")
        idx = np.asarray(v.indices)[v.clusters == cid]
    else:
        idx = np.flatnonzero(labels == label)
if source not in ("unfitted", "label_noise"):  # those lists keep their own order (highest loss first)
    idx = idx[np.argsort(-scores[idx], kind="stable")] if len(idx) else idx

g1, g2, g3 = st.columns([1, 2, 2])
method = g1.selectbox("CAM method", METHODS, key="inspect_method")
with shared.friendly_errors("Listing the model's layers"):
    layers, default_layer = _layers(model_key, model)
    layer = g2.selectbox("Target layer", layers, index=layers.index(default_layer) if default_layer in layers else 0,
                         key=f"inspect_layer_{model_key}", help="Default: the last convolutional block.")
    g3.caption("Target class: the model's predicted class. Red in the overlay is where the model looked.")

if len(idx) == 0:
    st.info("No samples in this set." + (" Select points on the Explore page first." if source == "selection" else ""),
            icon=":material/info:")
    shared.stop_page()

# ---- bulk decisions for the whole set ----------------------------------------------------------------------------
n_rem = int(run.removal_mask()[idx].sum())
st.markdown(f"**{len(idx):,} samples** · {int(flagged[idx].sum()):,} flagged · {n_rem:,} to be removed")
b = st.columns(3)
b[0].button(f"Remove all {len(idx):,}", key="inspect_bulk_remove", on_click=_decide, args=(idx, "remove"),
            icon=":material/delete:")
b[1].button(f"Keep all {len(idx):,}", key="inspect_bulk_keep", on_click=_decide, args=(idx, "keep"),
            icon=":material/check:")
b[2].button(f"Reset all {len(idx):,} to {det_label}'s call", key="inspect_bulk_reset", on_click=_decide,
            args=(idx, None), icon=":material/undo:")

# ---- one page of samples -------------------------------------------------------------------------------------------
n_pages = max(1, int(np.ceil(len(idx) / PAGE_SIZE)))
if ss.get("inspect_page", 1) > n_pages:
    ss["inspect_page"] = 1
page = st.pagination(n_pages, key="inspect_page") if n_pages > 1 else 1
on_page = idx[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
decisions = run.decisions()
with shared.friendly_errors("Grad-CAM"):
    with st.spinner("Computing Grad-CAM…"):
        cams, preds, logits = _cams(model_key, tuple(int(i) for i in on_page), method, layer, model,
                                    dataset.images[on_page])
    page_labels = np.asarray(labels[on_page], dtype=np.int64)
    # the class the model rates highest after the label: a relabelled sample's source class
    nexts = (strongest_other_class(logits, page_labels)
             if logits.shape[1] > 1 and 0 <= page_labels.min() and page_labels.max() < logits.shape[1] else None)
    cols = st.columns(2)
    for j, i in enumerate(on_page):
        i = int(i)
        with cols[j % 2].container(border=True):
            a, bimg, info = st.columns([1, 1, 2])
            img = dataset.images[i]
            a.image(plots.upscale(img, 112), caption="image", width="stretch")
            bimg.image(plots.upscale(overlay(img, cams[j]), 112), caption=method, width="stretch")
            p = int(preds[j])
            info.markdown(
                f"**#{i}** · {shared.class_name(run, int(labels[i]))}  \n"
                f"predicted **{shared.class_name(run, p)}**"
                # a misclassified sample's next class is its prediction: said only where it adds something
                + (f" · next after the label: {shared.class_name(run, int(nexts[j]))}"
                   if nexts is not None and p == int(labels[i]) else "")
                + f" · score {scores[i]:.3f}" + (f" · loss {losses[i]:.3g}" if losses is not None else "")
                + f" · cluster {df['cluster'].iat[i]}  \n"
                f"{det_label}: {'**flagged**' if flagged[i] else 'not flagged'}"
            )
            key = f"dec_{i}_{version}"
            current = decisions.get(i, "auto")
            info.radio(
                "Decision", ["auto", "keep", "remove"], index=["auto", "keep", "remove"].index(current), key=key,
                horizontal=True, on_change=_on_radio, args=(i, key), label_visibility="collapsed",
                format_func=lambda o, f=flagged[i]: {"auto": f"{det_label}: {'remove' if f else 'keep'}",
                                                     "keep": "keep", "remove": "remove"}[o],
            )
            info.caption(f"`{df['source'].iat[i]}`")

# ---- on request: do the shown samples share a trigger? ----------------------------------------------------------
if len(idx) and source != "flagged":
    with st.expander("Do these samples share a trigger? (test them as a group)"):
        st.caption("For each class with at least 10 of the shown samples: their mean image minus the mean of the rest "
                   "of the class, added to images of other classes the model does not put in the class; the share it "
                   "then puts there, against a perturbation as strong without that structure. A few seconds per class.")
        digest = hashlib.sha1(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()
        if st.button("Run the trigger test", key="inspect_trigger_test"):
            ss["inspect_trigger_for"] = (source, digest)
        if ss.get("inspect_trigger_for") == (source, digest):  # shown until the set of samples changes
            with shared.friendly_errors("The trigger test"):
                with st.spinner("Putting the group's mean difference on other classes' images…"):
                    records, diffs = _group_trigger(model_key, digest, model, dataset, idx)
                tbl = report.trigger_frame(records, lambda c: shared.class_name(run, c))
                if tbl is None:
                    st.info("No class holds 10 of the shown samples (and 10 others): nothing to test.")
                else:
                    st.dataframe(tbl.rename(columns={"flagged": "samples"}), hide_index=True)
                    _difference_grid(diffs, "shown")

# ---- mean CAM: where the trigger sits ------------------------------------------------------------------------------
st.divider()
st.subheader("Mean Grad-CAM over the flagged samples")
flag_idx = np.flatnonzero(flagged)
if len(flag_idx) == 0:
    st.caption(f"{det_label} flagged nothing, so there is no flagged set to average.")
else:
    top = flag_idx[np.argsort(-scores[flag_idx], kind="stable")][:MEAN_CAM_SAMPLES]
    rng = np.random.default_rng(0)
    rest = np.flatnonzero(~flagged)
    contrast = np.sort(rng.choice(rest, size=min(len(rest), len(top)), replace=False)) if len(rest) else rest
    with shared.friendly_errors("The mean Grad-CAM"):
        with st.spinner(f"Averaging Grad-CAM over {len(top)} flagged samples…"):
            fc = _cams(model_key, tuple(int(i) for i in top), method, layer, model, dataset.images[top])[0]
            cc = (_cams(model_key, tuple(int(i) for i in contrast), method, layer, model, dataset.images[contrast])[0]
                  if len(contrast) else None)
        mean_img = dataset.images[top].astype(np.float32).mean(axis=0).round().astype(np.uint8)
        m = st.columns(4)
        m[0].image(plots.upscale(mean_img, 160), caption=f"mean of {len(top)} flagged images", width="stretch")
        m[1].image(plots.upscale(plots.heat_rgb(fc.mean(axis=0) / max(fc.mean(axis=0).max(), 1e-6)), 160),
                   caption="mean CAM (flagged)", width="stretch")
        m[2].image(plots.upscale(overlay(mean_img, fc.mean(axis=0) / max(fc.mean(axis=0).max(), 1e-6)), 160),
                   caption="mean CAM over the mean image", width="stretch")
        if cc is not None:
            m[3].image(plots.upscale(plots.heat_rgb(cc.mean(axis=0) / max(cc.mean(axis=0).max(), 1e-6)), 160),
                       caption=f"mean CAM of {len(contrast)} unflagged (contrast)", width="stretch")
        st.caption("A bright spot shared by the flagged samples but not by the others is where a trigger likely sits.")

# ---- do the flagged samples share a trigger? (recorded by the analysis: flare_core/features/mode_trigger.py) ------
trig = report.trigger_table(run)
if trig is not None:
    st.divider()
    st.subheader("Do the flagged samples share a trigger?")
    st.caption("Per class, the flagged samples' mean image minus the mean of the rest of the class (grey = no "
               "difference) was added to images of other classes; *moved in* is the share the model then put in the "
               "class, *control* the same for a perturbation as strong without that structure. A *yes* says the "
               "class has a backdoor tied to this difference, not which side is poison (the clean rest of a class "
               f"poisoned half-way shares it negated). Tested on {det_label}'s flags when the run was made, before "
               "any review.")
    st.markdown(report.trigger_sentence(run))
    st.dataframe(trig, hide_index=True)
    diffs = run.trigger_differences()
    if diffs:
        _difference_grid(diffs, "flagged")
