"""Batched feature extraction over a dataset: FLARE abnormality features and pooled hidden features."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from flare_core.dataset import ImageDataset
from flare_core.errors import DataError, ModelError
from flare_core.features.abnormal import (ChannelMoments, abnormality_from_constants, abnormality_with_channels,
                                         gaussian_constants)
from flare_core.features.hooks import ActivationRecorder, unknown_name_error
from flare_core.features.layers import feature_points
from flare_core.features.view import ModelView, Point, model_view, module_device, unwrap
from flare_core.large_arrays import sample_array
from flare_core.models.loaded import LoadedModel
from flare_core.progress import ProgressCallback, ensure_progress

logger = logging.getLogger(__name__)

# the per-sample outputs, by the names a log line or a full-disk message gives them
PENULTIMATE, POOLED, LOGITS, PER_CHANNEL = "penultimate features", "pooled features", "logits", "per-channel features"


@dataclass
class FeatureMatrix:
    """values: (N, L) float32, one column per layer (``np.memmap`` opened read-only when written to a
    file); layer_names/layer_kinds: per column; stats_source: 'running' | 'data' | 'mixed'."""

    values: np.ndarray
    layer_names: list
    layer_kinds: list
    stats_source: str
    seconds: float
    path: Optional[str] = None
    #: (N, sum C) float32, per channel of every layer its largest |z| (only with ``channels=True``).
    channels: Optional[np.ndarray] = None
    #: (sum C,) int, the column of ``values`` (layer) each channel column belongs to.
    channel_layer: Optional[np.ndarray] = None
    #: The penultimate features and logits of the same forward pass (only with ``latent=True``).
    latent: Optional["LatentFeatures"] = None


def _check_args(dataset: ImageDataset, batch_size: int) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if len(dataset) == 0:
        raise DataError("The dataset is empty; load a dataset with at least one image.")


def _device(view: ModelView, device) -> torch.device:
    have = module_device(view.module)
    if device is None:
        return have
    want = torch.device(device)
    if want.type != have.type or (want.index is not None and have.index is not None and want.index != have.index):
        raise ModelError(f"The model is on {have} but {want} was requested; load the model on {want}.")
    return have


def _batches(model: LoadedModel, images: np.ndarray, batch_size: int, device) -> Iterator:
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        yield start, stop, model.preprocessing.to_tensor(images[start:stop], device)


def _prepare(model: LoadedModel, dataset: ImageDataset, device) -> tuple:
    example = model.preprocessing.to_tensor(dataset.images[:2], module_device(unwrap(model)[0]))
    view = model_view(model, example)
    return view, _device(view, device)


def _select(model: LoadedModel, view: ModelView, layers: Optional[Sequence[str]]) -> list:
    if layers is None:
        points = feature_points(model)
    else:
        points = []
        for name in layers:
            point = view.find(name, ("bn", "block"))
            if point is None:
                raise unknown_name_error(name, [p.name for p in view.points if p.kind in ("bn", "block")])
            points.append(point)
    if not points:
        raise ModelError("The model has no BatchNorm, convolution or normalisation layer FLARE can read.")
    return points


def _run(view: ModelView, model: LoadedModel, images: np.ndarray, specs: list, reduce, batch_size: int,
         device, progress: ProgressCallback, stage: str, keep_output: bool = False) -> Iterator:
    """Yields (start, stop, [reduced value per spec]) for every batch -- with ``keep_output`` also the
    model's (first) output of the batch as a fourth item; ``reduce`` sees only real samples (graphs with
    a fixed batch size run padded chunks, see ``ModelView.run_chunks``)."""
    total = len(images)
    valid = [0]

    def sliced(spec, act):
        return reduce(spec, act[:valid[0]])

    progress(stage, 0, total)
    with torch.inference_mode(), ActivationRecorder(view.module, specs, reduce=sliced) as rec:
        for start, stop, x in _batches(model, images, batch_size, device):
            parts: dict = {s: [] for s in specs}
            outputs = []
            for chunk, valid[0] in view.run_chunks(x):
                rec.activations.clear()
                out = view.module(chunk)
                missing = [s for s in specs if s not in rec.activations]
                if missing:
                    raise ModelError(f"Layer(s) {missing} did not run in the forward pass; choose other layers.")
                for s in specs:
                    parts[s].append(rec.activations[s])
                if keep_output:
                    if isinstance(out, (tuple, list)):
                        out = out[0]
                    outputs.append(out[:valid[0]].float())
            values = [_join(parts[s]) for s in specs]
            if keep_output:
                yield start, stop, values, _join(outputs)
            else:
                yield start, stop, values
            progress(stage, stop, total)


def _join(values: list):
    if len(values) > 1 and isinstance(values[0], torch.Tensor):
        return torch.cat(values)
    return values[0]


class _SampleRows:
    """Outputs with one float32 row per sample, each allocated when its first batch gives its width: in memory, or
    past :func:`~flare_core.large_arrays.ram_limit` in a memory-mapped temporary file, so a pass over N samples
    holds each output once (not a list of batches and then their concatenation)."""

    def __init__(self, n: int):
        self.n, self.arrays = n, {}

    def put(self, what: str, start: int, stop: int, block) -> None:
        block = block.float().cpu().numpy() if isinstance(block, torch.Tensor) else block
        block = block.reshape(len(block), -1)
        if what not in self.arrays:
            self.arrays[what] = sample_array((self.n, block.shape[1]), np.float32, what)
        self.arrays[what][start:stop] = block

    def get(self, what: str):
        return self.arrays.get(what)


def _data_statistics(view, model, images, points, batch_size, device, progress) -> dict:
    moments = {p.spec: ChannelMoments(p.channel_dim) for p in points if p.running_mean is None}
    specs = list(moments)

    def reduce(spec, act):
        moments[spec].update(act)

    for _ in _run(view, model, images, specs, reduce, batch_size, device, progress, "feature-stats"):
        pass
    return {spec: m.result() for spec, m in moments.items()}


def _open_output(out: Optional[str], shape: tuple) -> tuple:
    if out is None:
        return np.empty(shape, dtype=np.float32), None
    out = os.fspath(out)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(out)}.{os.getpid()}.tmp")
    return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape), tmp


def extract_abnormality_features(model: LoadedModel, dataset: ImageDataset, *, batch_size: int = 256,
                                 device=None, out: Optional[str] = None,
                                 progress: Optional[ProgressCallback] = None,
                                 layers: Optional[Sequence[str]] = None,
                                 channels: bool = False, latent: bool = False,
                                 latent_layer: Optional[str] = None) -> FeatureMatrix:
    """FLARE's (N, L) abnormality features: per sample and layer, the lowest log-density of any
    activation element under the layer's per-channel Gaussian (see :mod:`.abnormal`).

    BatchNorm layers use their running statistics (one pass, stage 'features'); block layers use
    statistics estimated from this dataset in a first pass (stage 'feature-stats'). Eval mode, no
    augmentation, ``torch.inference_mode``; the statistic is computed on-device inside the hook, so
    only (B,) values per layer leave the device. ``out``: path of a ``.npy`` file written batch by
    batch (atomically) and returned memory-mapped read-only. ``layers``: names from ``list_layers``.
    ``channels=True`` also returns the per-channel view (``FeatureMatrix.channels``, in memory): per
    channel its largest ``|z|``, from the same reduction at no extra forward pass.
    ``latent=True`` also returns what :func:`extract_latent_features` would (``FeatureMatrix.latent``:
    pooled ``latent_layer``, default the penultimate features, and the logits) from the *same* forward
    pass, so FLARE default's two inputs cost one pass over the data instead of two.
    """
    t0 = time.perf_counter()
    _check_args(dataset, batch_size)
    progress = ensure_progress(progress)
    view, dev = _prepare(model, dataset, device)
    points = _select(model, view, layers)
    stats = {p.spec: (p.running_mean, p.running_var) for p in points if p.running_mean is not None}
    if len(stats) < len(points):
        stats.update(_data_statistics(view, model, dataset.images, points, batch_size, dev, progress))
    by_spec = {p.spec: p for p in points}
    constants = {spec: gaussian_constants(m, v, by_spec[spec].eps, dev) for spec, (m, v) in stats.items()}

    specs = [p.spec for p in points]
    pool_point = _pooling_point(view, latent_layer) if latent else None
    pool_spec = None
    if pool_point is not None:
        pool_spec = pool_point.target if pool_point.kind == "module" else pool_point.spec
        if pool_spec in specs:  # one hook cannot hold two reductions of the same activation
            pool_point, pool_spec = None, None

    def reduce(spec, act):
        if spec == pool_spec:
            return _pool(act, pool_point.channel_dim)
        if channels:
            return abnormality_with_channels(act, constants[spec], by_spec[spec].channel_dim)
        return abnormality_from_constants(act, constants[spec], by_spec[spec].channel_dim)

    widths = [int(constants[spec][0].numel()) for spec in specs]
    values, tmp = _open_output(out, (len(dataset), len(points)))
    rows = _SampleRows(len(dataset))
    hooked = specs + ([pool_spec] if pool_point is not None else [])
    try:
        for item in _run(view, model, dataset.images, hooked, reduce, batch_size, dev, progress, "features",
                         keep_output=pool_point is not None):
            start, stop, scores = item[0], item[1], item[2][:len(specs)]
            if pool_point is not None:
                rows.put(PENULTIMATE, start, stop, item[2][-1])
                rows.put(LOGITS, start, stop, item[3])
            if channels:
                values[start:stop] = torch.stack([s[:, 0] for s in scores], dim=1).float().cpu().numpy()
                rows.put(PER_CHANNEL, start, stop, torch.cat([s[:, 1:] for s in scores], dim=1))
            else:
                values[start:stop] = torch.stack(scores, dim=1).float().cpu().numpy()
        if tmp is not None:
            values.flush()
            del values
            os.replace(tmp, out)
            values = np.load(out, mmap_mode="r")
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        raise
    kinds = {p.running_mean is not None for p in points}
    source = "mixed" if len(kinds) == 2 else ("running" if True in kinds else "data")
    seconds = time.perf_counter() - t0
    logger.info("Abnormality features %s for %d samples in %.2fs.", values.shape, len(dataset), seconds)
    channel_layer = np.repeat(np.arange(len(points)), widths) if channels else None
    lat = None
    if pool_point is not None:
        lat = _latent_features(rows.get(PENULTIMATE), rows.get(LOGITS), pool_point.name, 0.0)
    elif latent:  # the pooled layer is one of the abnormality layers: a pass of its own
        lat = extract_latent_features(model, dataset, latent_layer, batch_size=batch_size, device=device,
                                      progress=progress)
    return FeatureMatrix(values, [p.name for p in points], [p.kind for p in points], source, seconds,
                         os.fspath(out) if out is not None else None, rows.get(PER_CHANNEL), channel_layer, lat)


def _latent_features(pooled: np.ndarray, logits: np.ndarray, layer: str, seconds: float) -> "LatentFeatures":
    if logits.ndim != 2 or len(logits) != len(pooled):
        raise ModelError(f"The model's output has shape {logits.shape}; FLARE needs (N, classes) logits.")
    return LatentFeatures(pooled.astype(np.float32, copy=False), logits.astype(np.float32, copy=False), layer,
                          seconds)


def _pool(act: torch.Tensor, channel_dim: int) -> torch.Tensor:
    if act.dim() <= 2:
        return act.reshape(act.shape[0], -1).float()
    if channel_dim % act.dim() == act.dim() - 1:
        return act.flatten(1, -2).mean(dim=1).float()
    return act.flatten(2).mean(dim=2).float()


def _pooling_point(view: ModelView, layer: Optional[str]) -> Point:
    if layer is None:
        linears = view.of_kind("linear")
        if linears:
            return linears[-1]
        cams = view.of_kind("cam")
        if not cams:
            raise ModelError("The model has no Linear or convolution layer to take features from; pass a layer.")
        logger.info("No Linear layer found; pooling the last convolutional block %r.", cams[-1].name)
        return cams[-1]
    point = view.find(layer, ("linear", "bn", "block")) or view.find(layer, ("cam",))
    if point is not None:
        return point
    if view.is_graph:
        raise unknown_name_error(layer, [p.name for p in view.points])
    return Point(layer, "module", layer, "output", 1)  # an eager submodule name; checked by the recorder


@dataclass
class LatentFeatures:
    """pooled: (N, D) float32 pooled activations of ``layer`` (default: the penultimate features);
    logits: (N, K) float32 model outputs of the same forward pass; seconds: of that pass (0.0 when it was
    the abnormality pass, ``extract_abnormality_features(latent=True)``, which has its own)."""

    pooled: np.ndarray
    logits: np.ndarray
    layer: str
    seconds: float


def _pooled_pass(model: LoadedModel, dataset: ImageDataset, layer: Optional[str], batch_size: int, device,
                 progress: Optional[ProgressCallback], keep_output: bool) -> tuple:
    _check_args(dataset, batch_size)
    progress = ensure_progress(progress)
    view, dev = _prepare(model, dataset, device)
    point = _pooling_point(view, layer)
    spec = point.target if point.kind == "module" else point.spec
    rows = _SampleRows(len(dataset))

    def reduce(_spec, act):
        return _pool(act, point.channel_dim)

    for item in _run(view, model, dataset.images, [spec], reduce, batch_size, dev, progress, "pooled-features",
                     keep_output=keep_output):
        rows.put(POOLED, item[0], item[1], item[2][0])
        if keep_output:
            rows.put(LOGITS, item[0], item[1], item[3])
    return rows.get(POOLED), rows.get(LOGITS), point.name


def extract_pooled_features(model: LoadedModel, dataset: ImageDataset, layer: Optional[str] = None, *,
                            batch_size: int = 256, device=None,
                            progress: Optional[ProgressCallback] = None) -> tuple:
    """(N, D) float32 globally average-pooled activations of one layer, and the layer's name.

    Default layer: the input of the model's last Linear layer (the penultimate features, named
    ``'<linear>:input'``). Progress stage 'pooled-features'.
    """
    pooled, _, name = _pooled_pass(model, dataset, layer, batch_size, device, progress, keep_output=False)
    return pooled, name


def extract_latent_features(model: LoadedModel, dataset: ImageDataset, layer: Optional[str] = None, *,
                            batch_size: int = 256, device=None,
                            progress: Optional[ProgressCallback] = None) -> LatentFeatures:
    """The pooled features of :func:`extract_pooled_features` and the model's logits, from one forward
    pass (what FLARE default's latent stage reads). Progress stage 'pooled-features'."""
    t0 = time.perf_counter()
    pooled, logits, name = _pooled_pass(model, dataset, layer, batch_size, device, progress, keep_output=True)
    return _latent_features(pooled, logits, name, time.perf_counter() - t0)
