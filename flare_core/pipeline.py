"""One analysis end to end: load -> features -> detectors -> per-class views -> run folder (-> purified export).

This is the single entry point the CLI (`flare purify`) and the dashboard's Analyse page call.
"""
from __future__ import annotations

import logging
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from flare_core.atomic import check_replaceable
from flare_core.data.writers import check_no_overlap
from flare_core.dataset import ImageDataset
from flare_core.errors import DataError, FlareError
from flare_core.hashing import dataset_sha256
from flare_core.models.loaded import LoadedModel
from flare_core.progress import ProgressCallback, ensure_progress
from flare_core.run_folder import RunFolder, write_run
from flare_core.versions import package_versions

logger = logging.getLogger(__name__)

STAGES = ("load", "features", "pooled", "subspace-search", "umap", "hdbscan", "baselines", "views", "export", "write")


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything that determines an analysis (small, hashable: the dashboard caches on it)."""

    model: str
    data: str
    arch: Optional[str] = None
    data_format: Optional[str] = None
    split: str = "train"
    size: Optional[tuple] = None
    channels: Optional[int] = None
    mean: Optional[tuple] = None
    std: Optional[tuple] = None
    device: str = "cpu"
    batch_size: int = 256
    detector: str = "flare"
    baselines: tuple = ()
    ground_truth: Optional[str] = None
    seed: int = 0
    views: bool = True
    params: tuple = ()  # ((key, value), ...) passed to the main detector
    trigger_test: bool = True  # test whether each class's flagged samples share a trigger (mode_trigger.py)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = dict(self.params)
        d["baselines"] = list(self.baselines)
        return d

    def preprocessing_overrides(self) -> dict:
        return {k: v for k, v in (("size", self.size), ("channels", self.channels), ("mean", self.mean), ("std", self.std)) if v is not None}


@dataclass
class StageTimer:
    seconds: dict = field(default_factory=dict)

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def load_model_and_data(config: AnalysisConfig) -> tuple:
    """Load the dataset and the model a config names, and check that they fit each other."""
    from flare_core.data import load_dataset
    from flare_core.models import load_model

    dataset = load_dataset(config.data, format=config.data_format, split=config.split)
    model = load_model(config.model, arch=config.arch, preprocessing=config.preprocessing_overrides() or None,
                       device=config.device)
    check_fit(model, dataset)
    return model, dataset


def check_fit(model: LoadedModel, dataset: ImageDataset) -> None:
    """DataError where the model cannot read the dataset; a logged warning where it can but was described as
    trained on other data (:func:`fit_warnings`)."""
    if len(dataset) == 0:
        raise DataError("The dataset is empty; point FLARE at a folder or file with images.")
    top = int(dataset.labels.max())
    if top >= model.num_classes:
        raise DataError(
            f"The model has {model.num_classes} outputs but the dataset has labels up to {top}; "
            "use the dataset the model was trained on, or a model with more classes."
        )
    for warning in fit_warnings(model, dataset):
        logger.warning(warning)


def _listed(names, most: int = 4) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def single_class_warning(dataset: ImageDataset) -> str:
    """The sentence for a dataset that holds one class. Usually a wrong path: an ImageFolder given one level too
    high (``outer/`` holding only ``data/cat``, ``data/dog``) loads as the single class ``data``; the sub-folders
    are named so the user can point at the right folder."""
    name = dataset.classes[0] if dataset.classes else "0"
    text = f"The dataset holds a single class, {name!r}, so every image carries that label"
    if dataset.format == "imagefolder" and dataset.sources:
        top = Path(os.path.commonpath([str(Path(s).parent) for s in dataset.sources]))
        subs = sorted({Path(s).relative_to(top).parts[0] for s in dataset.sources if len(Path(s).relative_to(top).parts) > 1})
        if len(subs) > 1:
            return (text + f"; its images lie in the sub-folders {_listed(subs)}: if those are the classes, "
                    f"load {top} instead.")
    return text + "; if the images belong to several classes, give each class its own folder (root/<class>/<image>)."


def fit_warnings(model: LoadedModel, dataset: ImageDataset) -> list:
    """Sentences on a dataset that is likely not the one meant: a single class (:func:`single_class_warning`),
    or not what the model's description (its ``.json``: classes, image size) says it was trained on. A model
    can read another dataset (it is resized or fed at its own size), but FLARE reads a model on the data it was
    trained on: anything else gives flags that mean nothing."""
    desc = model.description or {}
    out = [] if dataset.num_classes != 1 else [single_class_warning(dataset)]
    size = desc.get("image_size")
    if size and tuple(int(v) for v in size) != tuple(dataset.image_shape[:2]):
        fed = model.preprocessing.size
        out.append(f"The model was trained on {size[0]}x{size[1]} images but these are "
                   f"{dataset.image_shape[0]}x{dataset.image_shape[1]} (fed "
                   + (f"resized to {fed[0]}x{fed[1]}" if fed else "at their own size")
                   + "); check that it is the model trained on this dataset.")
    classes = desc.get("classes")
    if classes and [str(c) for c in classes] != [str(c) for c in dataset.classes]:
        out.append(f"The model's classes ({_listed(classes)}) are not the dataset's ({_listed(dataset.classes)}); "
                   "check that it is the model trained on this dataset.")
    return out


def _detector(name: str, seed: int, params: dict):
    from flare_core.detectors.registry import DETECTORS

    if name not in DETECTORS:
        raise FlareError(f"Unknown detector {name!r}; choose one of {', '.join(sorted(DETECTORS))}.")
    spec = DETECTORS[name]
    default = spec.factory()
    known = default.get_params() if hasattr(default, "get_params") else None
    unknown = sorted(set(params) - set(known)) if known is not None else []
    if unknown:
        import difflib

        near = [m for k in unknown for m in difflib.get_close_matches(k, list(known), n=1)]
        raise FlareError(f"Detector {name!r} has no parameter {', '.join(map(repr, unknown))}"
                         + (f" (did you mean {', '.join(map(repr, near))}?)" if near else "")
                         + f"; its parameters are {', '.join(sorted(known))}.")
    try:
        est = spec.factory(**params)
    except TypeError as e:
        raise FlareError(f"Detector {name!r} does not take these parameters ({e}); check the advanced settings.") from e
    if hasattr(est, "get_params") and "random_state" in est.get_params() and "random_state" not in params:
        est.set_params(random_state=seed)
    return spec, est


def run_analysis(
    config: AnalysisConfig,
    out_dir: str | os.PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    overwrite: bool = False,
    export: bool = False,
    model: Optional[LoadedModel] = None,
    dataset: Optional[ImageDataset] = None,
) -> RunFolder:
    """Run the whole analysis and write the run folder ``out_dir`` atomically.

    With ``export=True`` the purified dataset is written into ``out_dir/purified`` inside the same atomic
    step. ``model``/``dataset`` may be passed when already loaded (the dashboard caches them).
    """
    from flare_core.features import extract_abnormality_features, extract_pooled_features

    progress = ensure_progress(progress)
    out_dir = Path(out_dir).absolute()
    check_replaceable(out_dir, overwrite=overwrite, marker="run.json", what="run folder")  # before the long part
    timer = StageTimer()
    t_start = time.perf_counter()

    progress("load", 0, 1)
    if model is None or dataset is None:
        model, dataset = timer.run("load", load_model_and_data, config)
    else:
        check_fit(model, dataset)
    check_no_overlap(dataset, out_dir, other_inputs={"model": config.model, "ground truth": config.ground_truth})
    progress("load", 1, 1)
    n = len(dataset)
    logger.info("loaded %d samples in %d classes; model kind=%s", n, dataset.num_classes, model.kind)

    out_dir.parent.mkdir(parents=True, exist_ok=True)  # `--out runs/badnets` in a folder without runs/ yet
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".scratch", dir=out_dir.parent))
    try:
        main_spec, main = _detector(config.detector, config.seed, dict(config.params))
        # the opt-in per-channel stage of FLARE default needs the per-channel view of the same pass
        want_channels = getattr(main, "use_channels", "off") == "auto" and getattr(main, "mode", "") == "default"
        # FLARE default's latent stage reads the penultimate features and logits: taken in the same forward
        # pass as the abnormality features (one pass over the data, not two)
        want_latent = (main_spec.uses_latent and getattr(main, "use_latent", "off") == "auto"
                       and getattr(main, "mode", "") == "default")
        feats = timer.run(
            "features", extract_abnormality_features, model, dataset, batch_size=config.batch_size,
            out=scratch / "features.npy", progress=progress, channels=want_channels, latent=want_latent,
        )
        X = np.asarray(feats.values)
        channel_inputs = {"channels": feats.channels, "channel_layer": feats.channel_layer} if want_channels else {}

        baselines = [b for b in config.baselines if b != config.detector]
        need_pooled = main_spec.input == "pooled" or any(_spec(b).input == "pooled" for b in baselines)
        pooled = None
        pooled_layer = None
        latent_inputs = {}
        if want_latent:
            lat = feats.latent
            pooled, pooled_layer = lat.pooled, lat.layer
            latent_inputs = {"latent": lat.pooled, "logits": lat.logits}
        elif need_pooled:
            pooled, pooled_layer = timer.run(
                "pooled", extract_pooled_features, model, dataset, batch_size=config.batch_size, progress=progress
            )

        def inputs_for(spec):
            return X if spec.input == "abnormality" else pooled

        # FLARE default's shortcut stage: does the model obey an image-wide transform as a trigger (two
        # small extra passes: a probe on a sample, then the counter test of one class)
        shortcut = None
        if (main_spec.uses_latent and getattr(main, "use_shortcut", "off") == "auto"
                and getattr(main, "mode", "") == "default"):
            from flare_core.features.shortcuts import shortcut_evidence

            known = latent_inputs.get("logits")  # the feature pass's logits: the counter test reuses them
            shortcut = timer.run("shortcut", shortcut_evidence, model, dataset, batch_size=config.batch_size,
                                 seed=config.seed, progress=progress, logits=known)
        shortcut_inputs = {"shortcut": shortcut} if shortcut is not None else {}
        # FLARE default's minority modes and their trigger test (a class's minority mode's mean image
        # difference put on other images: two small passes per class that holds a mode, none otherwise)
        if want_latent and getattr(main, "minority_modes", "off") == "auto":
            from flare_core.features.mode_trigger import mode_trigger_evidence

            shortcut_inputs["mode_trigger"] = timer.run(
                "mode_trigger", mode_trigger_evidence, model, dataset, latent_inputs["latent"],
                logits=latent_inputs["logits"], random_state=getattr(main, "random_state", config.seed),
                batch_size=config.batch_size, progress=progress)
        if (main_spec.uses_latent and getattr(main, "input_pattern", "off") == "auto"
                and getattr(main, "mode", "") == "default"):
            # FLARE default's last stage reads the pixels: does the flagged samples' pattern recur elsewhere?
            shortcut_inputs["images"] = dataset.images
        timer.run("detector", _fit, main, inputs_for(main_spec), dataset.labels, progress, **channel_inputs,
                  **latent_inputs, **shortcut_inputs)
        flagged = np.asarray(main.flagged_, dtype=bool)
        scores = np.asarray(main.scores_, dtype=float)
        clusters = np.asarray(getattr(main, "clusters_", np.zeros(n, dtype=int)), dtype=int)

        manifest = pd.DataFrame({
            "index": np.arange(n),
            "source": dataset.sources,
            "label": dataset.labels,
            "class_name": [dataset.classes[i] for i in dataset.labels],
            "flagged": flagged.astype(int),
            "score": np.round(scores, 6),
            "cluster": clusters,
        })
        if want_latent and feats.latent is not None and feats.latent.logits is not None:
            # the model's own view of every sample: how badly it fits the label, and what it sees next to it
            # (poison of a backdoor that did not take is not fitted; dirty-label poison keeps its source class)
            from flare_core.detectors.latent import sample_loss
            from flare_core.detectors.tail_groups import strongest_other_class

            logits = np.asarray(feats.latent.logits)
            if logits.shape[1] > int(dataset.labels.max()):
                manifest["loss"] = np.round(sample_loss(logits, dataset.labels), 6)
                manifest["next_class"] = (strongest_other_class(logits, dataset.labels) if logits.shape[1] > 1
                                          else np.full(n, -1))
        label_noise = getattr(main, "label_noise_", None)
        if label_noise is not None:  # split off, but left unflagged as mislabelled images (label_noise.py)
            manifest["label_noise"] = np.asarray(label_noise, dtype=bool).astype(int)
        if shortcut is not None and shortcut.found:
            # how far the label's log-probability falls when the model's transform trigger is undone
            manifest["shortcut_drop"] = np.round(shortcut.drop, 4)
        detector_reports = {config.detector: _report_of(main)}
        evidence = ((detector_reports[config.detector].get("report") or {}).get("evidence") or {})
        if (evidence.get("latent") or {}).get("tail_groups"):
            # is a kept tail group many copies of one image? (pixel space; the run says so, flags nothing)
            from flare_core.near_copies import annotate_tail_groups

            annotate_tail_groups(evidence, clusters, dataset.labels, dataset.images, random_state=config.seed)
        for b in baselines:
            progress("baselines", baselines.index(b), len(baselines))
            spec, est = _detector(b, config.seed, {})
            timer.run(f"baseline:{b}", _fit, est, inputs_for(spec), dataset.labels, None)
            manifest[f"flagged_{b}"] = np.asarray(est.flagged_, dtype=bool).astype(int)
            manifest[f"score_{b}"] = np.round(np.asarray(est.scores_, dtype=float), 6)
            detector_reports[b] = _report_of(est)
        if baselines:
            progress("baselines", len(baselines), len(baselines))

        # do the flagged samples of a class share a trigger?  Their mean image difference from the rest of
        # the class, put on other classes' images (two small passes per class with flags; the evidence a
        # review asks for, whichever detector flagged them)
        flag_triggers = None
        extra_files = {"features.npy": scratch / "features.npy"}
        if config.trigger_test and flagged.any():
            from flare_core.features.mode_trigger import flagged_group_triggers

            known = latent_inputs.get("logits")
            flag_triggers = timer.run("flag_trigger", flagged_group_triggers, model, dataset, flagged, logits=known,
                                      random_state=config.seed, batch_size=config.batch_size, progress=progress)
            if flag_triggers.differences:
                np.savez(scratch / "triggers.npz", **{f"class_{c}": d for c, d in flag_triggers.differences.items()})
                extra_files["triggers.npz"] = scratch / "triggers.npz"

        evaluation = None
        gt_meta = None
        if config.ground_truth:
            truth, gt_meta = _load_truth(config.ground_truth, n)
            manifest["poisoned"] = truth.astype(int)
            evaluation = _evaluate(manifest, [config.detector] + baselines, config.detector, truth)

        views = None
        views_on = None
        if config.views:
            from flare_core.detectors.views import class_views

            subspace = int(getattr(main, "subspace_", X.shape[1]) or X.shape[1])
            view_input = X[:, :subspace] if main_spec.input == "abnormality" else inputs_for(main_spec)
            representation = (getattr(main, "report_", None) or {}).get("representation", "")
            # show the space the poison was found in
            if ("latent" in representation or "tail" in representation) and pooled is not None:
                view_input = pooled
            views_on = "penultimate" if (pooled is not None and view_input is pooled) else main_spec.input
            views = timer.run("views", class_views, view_input, dataset.labels, flagged=flagged,
                              random_state=config.seed, progress=progress)

        counts = dataset.class_counts()
        flagged_per_class = np.bincount(dataset.labels[flagged], minlength=dataset.num_classes)
        meta = {
            "format": "flare-run/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": config.to_dict(),
            "model": model.describe(),
            "dataset": {
                "path": str(dataset.root or config.data), "format": dataset.format, "split": config.split,
                "n_samples": n, "image_shape": list(dataset.image_shape), "classes": list(dataset.classes),
                "counts": counts.tolist(), "skipped": [list(s) for s in dataset.skipped[:1000]],
                "n_skipped": len(dataset.skipped), "sha256": dataset_sha256(dataset.images, dataset.labels),
            },
            "features": {
                "layers": list(feats.layer_names), "layer_kinds": list(getattr(feats, "layer_kinds", [])),
                "stats_source": getattr(feats, "stats_source", None), "pooled_layer": pooled_layer,
                "views_on": views_on,
            },
            "detector": {"name": config.detector, "params": dict(config.params), "report": detector_reports[config.detector]},
            "baselines": {b: detector_reports[b] for b in baselines},
            "result": {
                "n_flagged": int(flagged.sum()),
                "flagged_per_class": flagged_per_class.tolist(),
                "subspace": getattr(main, "subspace_", None),
                "poison_found": bool(flagged.any()),
                "flag_triggers": flag_triggers.summary() if flag_triggers is not None else None,
            },
            "ground_truth": gt_meta,
            "evaluation": evaluation,
            "versions": package_versions(),
        }

        def finish(tmp: Path) -> None:
            if export:
                from flare_core.data.writers import export_subset

                progress("export", 0, 1)
                keep = np.flatnonzero(~flagged)
                timer.run("export", export_subset, dataset, keep, tmp / "purified")
                progress("export", 1, 1)
            meta["timings"] = {**timer.seconds, "total": round(time.perf_counter() - t_start, 3)}
            meta["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

        progress("write", 0, 1)
        run = write_run(out_dir, meta=meta, manifest=manifest, features=None, pooled=pooled,
                        embedding=getattr(main, "embedding_", None), views=views,
                        extra_files=extra_files, overwrite=overwrite,
                        before_commit=finish)
        progress("write", 1, 1)
        return run
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fit(est, X, y, progress, **extra):
    import inspect

    if progress is not None and "progress" in inspect.signature(est.fit).parameters:
        return est.fit(X, y, progress=progress, **extra)
    return est.fit(X, y, **extra)


def _spec(name: str):
    from flare_core.detectors.registry import DETECTORS

    if name not in DETECTORS:
        raise FlareError(f"Unknown detector {name!r}; choose one of {', '.join(sorted(DETECTORS))}.")
    return DETECTORS[name]


def _report_of(est) -> dict:
    rep = getattr(est, "report_", None)
    if rep is None:
        rep = getattr(est, "evidence_", None)
    params = est.get_params() if hasattr(est, "get_params") else {}
    params = {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None), list, tuple))}
    return {"params": params, "report": rep}


def _load_truth(path: str, n: int) -> tuple:
    from flare_core.attacks import GroundTruth

    gt = GroundTruth.from_json(path)
    if gt.n_total != n:
        raise DataError(f"The ground-truth file describes {gt.n_total} samples but the dataset has {n}; "
                        "use the ground truth written with this poisoned dataset.")
    meta = {"path": str(path), "attack": gt.attack, "mode": gt.mode, "target": gt.target, "rate": gt.rate,
            "n_poisoned": int(len(gt.poisoned_indices))}
    return gt.mask(n), meta


def _evaluate(manifest: pd.DataFrame, detectors: list, main: str, truth: np.ndarray) -> dict:
    from flare_core.metrics import detection_metrics

    out = {}
    for d in detectors:
        fcol, scol = ("flagged", "score") if d == main else (f"flagged_{d}", f"score_{d}")
        out[d] = detection_metrics(manifest[fcol].to_numpy().astype(bool), truth, manifest[scol].to_numpy())
    return out


def export_purified(run: RunFolder, out_dir: str | os.PathLike, *, dataset: Optional[ImageDataset] = None,
                    detector: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write the samples the run keeps (detector flags overridden by the analyst's decisions)
    in the input's own layout. Returns the written path."""
    from flare_core.data.writers import export_subset

    if dataset is None:
        dataset = load_dataset_of(run)
    if len(dataset) != run.n_samples:
        raise DataError(f"The dataset now has {len(dataset)} samples but the run analysed {run.n_samples}; "
                        "it changed since the analysis, so re-run it.")
    keep = np.flatnonzero(~run.removal_mask(detector))
    return Path(export_subset(dataset, keep, out_dir, overwrite=overwrite))


def load_dataset_of(run: RunFolder) -> ImageDataset:
    """Reload the dataset a run analysed (checks it is unchanged by its hash)."""
    from flare_core.data import load_dataset

    cfg = run.meta.get("config", {})
    ds = load_dataset(cfg.get("data"), format=cfg.get("data_format"), split=cfg.get("split", "train"))
    check_inputs_of(run, dataset=ds)
    return ds


def load_model_of(run: RunFolder) -> LoadedModel:
    """Reload the model a run analysed (checks it is unchanged by its file's hash)."""
    from flare_core.models import load_model

    cfg = run.meta.get("config", {})
    pre = {k: cfg.get(k) for k in ("size", "channels", "mean", "std") if cfg.get(k) is not None}
    model = load_model(cfg["model"], arch=cfg.get("arch"), preprocessing=pre or None, device=cfg.get("device", "cpu"))
    check_inputs_of(run, model=model)
    return model


def check_inputs_of(run: RunFolder, *, model: Optional[LoadedModel] = None,
                    dataset: Optional[ImageDataset] = None) -> None:
    """Raise DataError / ModelError when the dataset or model loaded to show a run are not the ones it analysed
    (sample count, and the hashes ``run.json`` records): its flags and scores would point at other images, and
    Grad-CAM would show another model's attention."""
    from flare_core.errors import ModelError

    cfg = run.meta.get("config", {})
    if dataset is not None:
        if len(dataset) != run.n_samples:
            raise DataError(f"The dataset now has {len(dataset)} samples but the run analysed {run.n_samples}; "
                            "it changed since the analysis, so re-run it.")
        want = run.meta.get("dataset", {}).get("sha256")
        if want and dataset_sha256(dataset.images, dataset.labels) != want:
            raise DataError(f"The dataset at {cfg.get('data')} changed since this run analysed it; re-run the analysis.")
    if model is not None:
        want = run.meta.get("model", {}).get("sha256")
        if want and model.sha256 and model.sha256 != want:
            raise ModelError(f"The model at {cfg.get('model')} changed since this run analysed it; re-run the analysis.")
