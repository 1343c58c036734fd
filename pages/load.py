"""Load: the built-in demo in one click, a model and a dataset (server path or upload), or a previous run."""
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from flare_core import server_paths
from flare_core.errors import FlareError
from pages import _shared as shared

shared.require_app_router()  # before anything else: never run as a legacy pages/ page

ss = st.session_state
st.title("Load a model and a dataset")
st.caption("FLARE finds backdoor-poisoned training samples from a model's hidden-layer statistics. "
           "Start with the built-in demo, bring your own model and data, or reopen an earlier analysis.")

if ss.get(shared.DEMO_PENDING):
    st.info("Loading the built-in demo (nothing else was open)…", icon=":material/hourglass_top:")
elif ss.get(shared.DEMO_AUTO) and ss.get(shared.DEMO) is not None and ss.get(shared.DATASET) is not None:
    with st.container(border=True, key="demo_note"):
        st.info("**The built-in demo is loaded** (nothing else was open), so you can go straight to Analyse. "
                "To work on your own data, switch on **Use my own model and dataset** below (a model file and a "
                "dataset, as server paths or uploads), or reopen an earlier run folder.", icon=":material/info:")
        st.page_link(shared.PAGES["analyse"], label="Analyse the demo", icon=":material/play_arrow:")

# ---- 1. the demo -----------------------------------------------------------------------------------------------
with st.container(border=True):
    c1, c2 = st.columns([3, 1], vertical_alignment="center")
    c1.subheader("Built-in demo")
    c1.write("A poisoned Fashion-MNIST training set made by the project's backdoor lab (scikit-learn's digits "
             "when Fashion-MNIST is not installed): some images carry a small BadNets patch and were relabelled. "
             "A small model trained on it ships with the workbench, and the ground truth is known, so you can "
             "check what FLARE finds.")
    if c2.button("Start the demo", type="primary", key="start_demo", icon=":material/rocket_launch:"):
        with shared.friendly_errors("Preparing the demo"):
            shared.start_demo()
            st.toast("Demo loaded: go to Analyse to run FLARE.", icon=":material/check_circle:")

# ---- 2. your own model and data ------------------------------------------------------------------------------------
roots = server_paths.allowed_roots()


def _browse_pick(target_key: str, value: str) -> None:
    ss[target_key] = value


if st.toggle("Use my own model and dataset", key="own_toggle"):
    st.caption("Server paths must lie inside: " + ", ".join(f"`{r}`" for r in roots))
    with st.form("load_form", border=False):
        mc, dc = st.columns(2)
        with mc:
            st.markdown("**Model**")
            model_path = st.text_input("Model file on the server (.pt, .pth, .safetensors, TorchScript, .pt2)",
                                       key="model_path_input")
            model_upload = st.file_uploader("…or upload a model file (with its description .json, if it has one)",
                                            type=["pt", "pth", "safetensors", "pt2", "ts", "json"],
                                            accept_multiple_files=True, key="model_upload",
                                            help="`flare train` writes model.json beside model.pt: it names the "
                                                 "architecture, classes and preprocessing. Upload both together.")
            from flare_core.models import ARCHITECTURE_HELP, architecture_names

            arch = st.selectbox("Architecture (needed for weights-only files without a description)",
                                ["(from the file)"] + architecture_names(), key="arch_input",
                                help="\n".join(f"- **{k}**: {v}" for k, v in ARCHITECTURE_HELP.items()))
            torchvision_name = st.text_input("…or a torchvision classifier name (e.g. resnet18)", key="tv_input")
            with st.expander("Preprocessing (only if the file does not describe it)"):
                size_txt = st.text_input("Input size H, W", placeholder="e.g. 32, 32", key="size_input")
                channels = st.selectbox("Channels", ["(from the model)", 1, 3], key="channels_input")
                mean_txt = st.text_input("Normalisation mean", placeholder="e.g. 0.5, 0.5, 0.5", key="mean_input")
                std_txt = st.text_input("Normalisation std", placeholder="e.g. 0.25, 0.25, 0.25", key="std_input")
            device = st.selectbox("Device", ["cpu", "cuda"], key="device_input")
        with dc:
            st.markdown("**Dataset**")
            data_path = st.text_input("Dataset on the server (image folder, CSV manifest, CIFAR folder, IDX, .npz, "
                                      "flare attack output folder)",
                                      key="data_path_input")
            limit_mb = st.get_option("server.maxUploadSize")
            data_upload = st.file_uploader("…or upload a dataset (.zip or .tar.gz of a dataset folder, or .npz)",
                                           type=["zip", "tar", "gz", "tgz", "bz2", "xz", "npz"], key="data_upload",
                                           help=f"Up to {limit_mb:,} MB a file; put larger datasets on the server "
                                                "and give their path.")
            folder_upload = st.file_uploader("…or upload a dataset folder", accept_multiple_files="directory",
                                             key="folder_upload",
                                             help="The folder of class folders (root/<class>/<image>), or one that "
                                                  "holds a manifest.csv, IDX or CIFAR files, of up to "
                                                  f"{server_paths.MAX_FOLDER_FILES} files: the browser sends them one "
                                                  "by one. Larger folders: a .zip (10,000 images load in seconds) "
                                                  "or a server path. A file the browser failed to send shows an "
                                                  "error here and is not loaded: check the sample count.")
            from flare_core.data import FORMATS

            fmt = st.selectbox("Format", ["(detect)"] + list(FORMATS), key="format_input")
            split = st.selectbox("Split (where the input holds train and test)", ["train", "test"], key="split_input")
            gt_path = st.text_input("Ground-truth file (optional, from the backdoor lab)", key="gt_input",
                                    help="ground_truth.json, or the `flare attack` output folder that holds it. "
                                         "With it, the Evaluate page measures how well the detectors did. A "
                                         "dataset that is a `flare attack` output folder brings its own.")
        submitted = st.form_submit_button("Load model and dataset", type="primary", icon=":material/upload:")

    if submitted:
        with shared.friendly_errors("Loading"):
            from flare_core.pipeline import AnalysisConfig

            # An upload stays in its box until cleared: one left from an earlier try must not win over a typed path.
            if model_upload and model_path.strip():
                raise FlareError("Give the model as a server path or as an upload, not both; clear one of them.")
            if sum(map(bool, (data_upload, folder_upload, data_path.strip()))) > 1:
                raise FlareError("Give the dataset one way: a server path, an uploaded file or an uploaded folder; "
                                 "clear the others.")
            if model_upload:
                model_file = server_paths.store_model_upload([(f.name, f.getvalue()) for f in model_upload])
            else:
                model_file = server_paths.resolve_allowed(model_path, must_exist=True)
            if data_upload is not None:
                data_file = server_paths.open_dataset_upload(data_upload.name, data_upload.getvalue())
            elif folder_upload:
                data_file = server_paths.store_folder_upload([(f.name, f.getvalue()) for f in folder_upload])
            elif data_path.strip().startswith("builtin:"):
                data_file = data_path.strip()
            else:
                data_file = server_paths.resolve_allowed(data_path, must_exist=True)
            from flare_core.data import lab_ground_truth

            gt = (str(server_paths.resolve_allowed(gt_path, must_exist=True)) if gt_path.strip()
                  else lab_ground_truth(data_file, split))  # a backdoor-lab folder brings its own
            chosen_arch = f"torchvision:{torchvision_name.strip()}" if torchvision_name.strip() else (
                None if arch == "(from the file)" else arch)
            config = AnalysisConfig(
                model=str(model_file), data=str(data_file), arch=chosen_arch,
                data_format=None if fmt == "(detect)" else fmt, split=split,
                size=shared.parse_numbers(size_txt, "The input size", count=(2,), kind=int),
                channels=None if channels == "(from the model)" else int(channels),
                mean=shared.parse_numbers(mean_txt, "The mean", count=(1, 3)),
                std=shared.parse_numbers(std_txt, "The std", count=(1, 3)),
                device=device, ground_truth=gt,
            )
            shared.use_config(config)
            ss.pop(shared.DEMO, None)
            ss.pop(shared.DEMO_AUTO, None)
            st.toast("Model and dataset loaded.", icon=":material/check_circle:")

    with st.popover("Browse server folders", icon=":material/folder_open:"):
        start = Path.cwd() if server_paths.is_allowed(Path.cwd(), roots) else roots[0]
        folder = st.text_input("Folder", value=str(start), key="browse_folder")
        with shared.friendly_errors("Browsing"):
            entries = server_paths.list_folder(folder)
            if not entries:
                st.caption("This folder is empty.")
            else:
                pick = st.selectbox("Entries", entries, format_func=lambda p: ("📁 " if p.is_dir() else "📄 ") + p.name,
                                    key="browse_pick")
                b1, b2, b3 = st.columns(3)
                b1.button("Use as model", on_click=_browse_pick, args=("model_path_input", str(pick)), key="pick_model")
                b2.button("Use as dataset", on_click=_browse_pick, args=("data_path_input", str(pick)), key="pick_data")
                b3.button("Browse into", on_click=_browse_pick, args=("browse_folder", str(pick)), key="pick_dir",
                          disabled=not pick.is_dir())

# ---- 3. reopen an earlier run ---------------------------------------------------------------------------------------
with st.expander("Reopen an earlier analysis (a run folder)"):
    runs_dir = server_paths.cache_dir() / "runs"
    recent = sorted((p for p in runs_dir.glob("*") if (p / "run.json").exists()), key=lambda p: -p.stat().st_mtime) \
        if runs_dir.exists() else []
    run_input = st.text_input("Run folder (written by `flare purify` or this dashboard)", key="reopen_input")
    if recent:
        st.selectbox("…or a recent analysis from this dashboard", [None] + recent, key="reopen_recent",
                     format_func=lambda p: "—" if p is None else f"{p.name} ({pd.Timestamp(p.stat().st_mtime, unit='s'):%Y-%m-%d %H:%M})")
    if st.button("Reopen", key="reopen_button", icon=":material/folder_open:"):
        with shared.friendly_errors("Reopening the run"):
            target = run_input.strip() or (str(ss.get("reopen_recent")) if ss.get("reopen_recent") else "")
            run = shared.set_run(target)
            st.success(f"Reopened {run.path}: {run.n_samples:,} samples, {int(run.flagged().sum()):,} flagged. "
                       "Nothing is recomputed.")

# ---- what is loaded ---------------------------------------------------------------------------------------------
# Only what this session loaded is summarised here (a reopened run loads its model and data when a page needs
# them), so the first page after a restart appears without waiting for torch and the data.
model, dataset = ss.get(shared.MODEL), ss.get(shared.DATASET)
if dataset is not None:
    st.divider()
    demo = ss.get(shared.DEMO)
    st.subheader(demo.title if demo is not None else "Loaded")
    if demo is not None:
        st.caption(demo.description)
    c = st.columns(4)
    c[0].metric("samples", f"{len(dataset):,}")
    c[1].metric("classes", dataset.num_classes)
    c[2].metric("image size", "×".join(map(str, dataset.image_shape)))
    c[3].metric("skipped files", len(dataset.skipped))
    if dataset.images_on_disk:
        where = ("read in place from the `.npz` file, memory-mapped read-only" if dataset.images_file else
                 "kept in a memory-mapped temporary file")
        st.caption(f"The images ({dataset.images.nbytes / 2**30:.1f} GB) are more than the limit on images in memory "
                   "(`FLARE_IMAGE_RAM_MB`; by default a quarter of the free memory, at most 2 GB), so they are "
                   f"{where}; the system keeps what fits of it in RAM.")
    left, right = st.columns([2, 3])
    with left:
        counts = pd.DataFrame({"class": [f"{k}: {n}" for k, n in enumerate(dataset.classes)],
                               "samples": dataset.class_counts()})
        st.dataframe(counts, hide_index=True, height=min(420, 38 + 35 * len(counts)))
    with right:
        per = 2 if dataset.num_classes <= 10 else 1
        show = [i for k in range(min(dataset.num_classes, 20)) for i in np.flatnonzero(dataset.labels == k)[:per]]
        shared.image_grid(dataset.images[show], [dataset.classes[dataset.labels[i]] for i in show], columns=5, min_side=64)
    if model is not None:
        from flare_core.pipeline import fit_warnings

        for warning in fit_warnings(model, dataset):
            st.warning(warning, icon=":material/warning:")
        with st.expander("Model summary", expanded=True):
            n_params = sum(p.numel() for p in model.module.parameters()) if hasattr(model.module, "parameters") else 0
            desc = model.describe()
            rows = {"file": Path(str(desc.get("path"))).name, "format": desc.get("kind"), "architecture": desc.get("arch"),
                    "classes": desc.get("num_classes"), "parameters": f"{n_params:,}", "device": desc.get("device"),
                    "preprocessing": str(desc.get("preprocessing")), "sha256": str(desc.get("sha256"))[:16] + "…"}
            st.table(pd.DataFrame({"": list(rows), "value": [str(v) for v in rows.values()]}).set_index(""))
    if dataset.skipped:
        with st.expander(f"{len(dataset.skipped)} files could not be read and were skipped"):
            st.dataframe(pd.DataFrame(dataset.skipped, columns=["file", "reason"]), hide_index=True)
    st.page_link(shared.PAGES["analyse"], label="Next: run the analysis", icon=":material/arrow_forward:")
elif shared.current_run() is not None:
    st.info("An analysis is open (see the sidebar); its model and data are loaded when a page needs them.",
            icon=":material/info:")
    if st.button("Load its model and data now", key="load_run_inputs"):
        if shared.model_and_data()[1] is not None:
            st.rerun()
