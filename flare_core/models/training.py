"""Training a classifier on an in-memory ImageDataset, and evaluating one.

Batches are built from the uint8 image array with tensor ops (no per-image PIL work), augmentation
(random crop with zero padding, horizontal flip) is done on whole batches, and the run is deterministic
on the CPU for a given seed. Training uses ``Preprocessing()`` (pixels in [0, 1]) unless told otherwise.
"""
from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flare_core.dataset import ImageDataset
from flare_core.errors import DataError, FlareError
from flare_core.metrics import benign_accuracy
from flare_core.models.architectures import build_model
from flare_core.models.loaded import LoadedModel
from flare_core.models.preprocessing import Preprocessing, shared_tensor
from flare_core.progress import ProgressCallback, ensure_progress

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
AUGMENTS = ("auto", "none", "crop", "flip", "crop+flip")

# Per-architecture defaults (epochs, optimizer, lr for sgd/adam, weight decay).
_SMALL = {"epochs": 4, "optimizer": "sgd", "lr": {"sgd": 0.05, "adam": 1e-3}, "weight_decay": 5e-4}
_RESNET = {"epochs": 30, "optimizer": "sgd", "lr": {"sgd": 0.1, "adam": 1e-3}, "weight_decay": 5e-4}
TRAINING_DEFAULTS = {
    "small-cnn": _SMALL,
    "small-cnn-gn": _SMALL,
    "narrow-resnet": {**_RESNET, "epochs": 15},
    "resnet18-cifar": _RESNET,
    "torchvision": {**_RESNET, "lr": {"sgd": 0.05, "adam": 1e-3}},
}


def training_defaults(arch: str) -> dict:
    """Default epochs / optimizer / lr / weight decay for an architecture name."""
    key = "torchvision" if arch.startswith("torchvision:") else arch
    return TRAINING_DEFAULTS.get(key, _RESNET)


# --------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------

def resolve_augment(augment: Union[None, bool, str], image_shape: tuple) -> Tuple[int, bool]:
    """(crop padding in pixels, horizontal flip?) for an ``augment`` setting and (H, W, C) images.

    None/'auto'/True: crop with padding 2 (images under 32 px) or 4, plus flip for colour images only.
    False/'none': nothing. 'crop', 'flip', 'crop+flip': as named.
    """
    h, w, c = image_shape
    pad = 4 if min(h, w) >= 32 else 2
    if augment is None or augment is True or augment == "auto":
        return pad, c == 3
    if augment is False or augment == "none":
        return 0, False
    if augment == "crop":
        return pad, False
    if augment == "flip":
        return 0, True
    if augment == "crop+flip":
        return pad, True
    raise FlareError(f"Unknown augmentation {augment!r}; use one of {', '.join(AUGMENTS)}.")


def augment_batch(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop (after zero padding by ``pad``) and random horizontal flip of a (B, C, H, W) batch.

    Random numbers come from ``generator`` (a CPU generator), so results do not depend on the device.
    Returns a new tensor; ``x`` is not modified.
    """
    b, _, h, w = x.shape
    if pad > 0:
        offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = offsets[0][:, None] + torch.arange(h, device=x.device)[None, :]  # (B, H)
        cols = offsets[1][:, None] + torch.arange(w, device=x.device)[None, :]  # (B, W)
        bi = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device).view(b, 1, 1, 1)
        x = torch.where(mask, x.flip(3), x)
    return x


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str) -> float:
    """Learning rate at an optimisation step: per-step cosine to 0, step decay x0.1 at 50% and 75%, or constant."""
    if schedule == "cosine":
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * step / max(1, total_steps)))
    if schedule == "step":
        frac = step / max(1, total_steps)
        return base_lr * (0.1 ** ((frac >= 0.5) + (frac >= 0.75)))
    return base_lr


def make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9):
    """SGD (Nesterov momentum) or Adam; no weight decay on biases and normalisation parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    return torch.optim.Adam(groups, lr=lr)


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (default min(2, cpu count)), restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n if n is not None else min(2, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device_of(module: nn.Module) -> str:
    for p in module.parameters():
        return str(p.device)
    for b in module.buffers():
        return str(b.device)
    return "cpu"


def _check_positive(name: str, value, kind=int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise FlareError(f"{name} must be a positive {'number' if kind is float else 'integer'}, got {value!r}.")


# --------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------

def predict_logits(model: Union[nn.Module, LoadedModel], images: np.ndarray,
                   preprocessing: Optional[Preprocessing] = None, batch_size: int = 256,
                   device: Optional[str] = None) -> np.ndarray:
    """(N, K) float32 logits of uint8 (N, H, W, C) images, in eval mode (the model's mode is restored)."""
    if isinstance(model, LoadedModel):
        preprocessing = preprocessing or model.preprocessing
        device = device or model.device
        model = model.module
    preprocessing = preprocessing or Preprocessing()
    device = device or _device_of(model)
    _check_positive("batch_size", batch_size)
    was_training = model.training
    try:
        model.eval()
        switched = True
    except NotImplementedError:  # torch.export modules have no eval(); their graph is fixed already
        switched = False
    outs = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = preprocessing.to_tensor(images[start:start + batch_size], device)
                outs.append(model(x).float().cpu())
    finally:
        if switched and was_training:
            model.train()
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outs).numpy()


def evaluate(model: Union[nn.Module, LoadedModel], dataset: ImageDataset,
             preprocessing: Optional[Preprocessing] = None, batch_size: int = 256,
             device: Optional[str] = None) -> Tuple[float, np.ndarray]:
    """(accuracy, predictions) of a model on a dataset; accuracy is NaN for an empty dataset.

    ``model`` may be a LoadedModel (its preprocessing and device are used unless given).
    """
    logits = predict_logits(model, dataset.images, preprocessing, batch_size, device)
    predictions = logits.argmax(1).astype(np.int64) if len(logits) else np.zeros(0, dtype=np.int64)
    return benign_accuracy(predictions, dataset.labels), predictions


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def train_model(
    dataset: ImageDataset,
    *,
    arch: str = "small-cnn",
    epochs: Optional[int] = None,
    batch_size: int = 128,
    lr: Optional[float] = None,
    optimizer: Optional[str] = None,
    schedule: str = "cosine",
    weight_decay: Optional[float] = None,
    momentum: float = 0.9,
    augment: Union[None, bool, str] = None,
    seed: int = 0,
    device: str = "cpu",
    val_dataset: Optional[ImageDataset] = None,
    progress: Optional[ProgressCallback] = None,
    num_workers: int = 0,
    num_threads: Optional[int] = None,
    preprocessing: Optional[Preprocessing] = None,
) -> Tuple[nn.Module, dict]:
    """Train a fresh ``arch`` model on ``dataset``; returns (model in eval mode on ``device``, history).

    Unset ``epochs``/``lr``/``optimizer``/``weight_decay`` take the architecture's defaults
    (:data:`TRAINING_DEFAULTS`). The same seed gives the same weights on the CPU. ``num_workers`` is
    accepted for interface compatibility only: batches come from the in-memory array, so no worker
    processes are used. history: per-epoch ``train_loss``, ``train_accuracy``, ``val_accuracy`` (None
    without ``val_dataset``), ``lr`` and ``seconds``, plus the ``config`` that was used.
    """
    if len(dataset) == 0:
        raise DataError("The training set is empty; give FLARE a dataset with images.")
    defaults = training_defaults(arch)
    epochs = defaults["epochs"] if epochs is None else epochs
    optimizer = (optimizer or defaults["optimizer"]).lower()
    if optimizer not in OPTIMIZERS:
        raise FlareError(f"Unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}.")
    lr = defaults["lr"][optimizer] if lr is None else lr
    weight_decay = defaults["weight_decay"] if weight_decay is None else weight_decay
    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    _check_positive("lr", lr, float)
    if schedule not in SCHEDULES:
        raise FlareError(f"Unknown learning-rate schedule {schedule!r}; use one of {', '.join(SCHEDULES)}.")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise FlareError(f"num_workers must be a non-negative integer, got {num_workers!r}.")
    if dataset.labels.min() < 0 or dataset.labels.max() >= dataset.num_classes:
        raise DataError(f"Labels must lie in 0..{dataset.num_classes - 1} (one per class name); fix the dataset.")
    pad, flip = resolve_augment(augment, dataset.image_shape)
    preprocessing = preprocessing or Preprocessing()
    from flare_core.models.loading import resolve_device

    device = resolve_device(device)
    progress = ensure_progress(progress)
    h, w, c = dataset.image_shape
    in_channels = preprocessing.channels or c
    n = len(dataset)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    config = {"arch": arch, "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
              "schedule": schedule, "weight_decay": weight_decay, "momentum": momentum,
              "augment": {"crop_padding": pad, "flip": flip}, "seed": seed, "device": device,
              "preprocessing": preprocessing.to_dict(), "n_train": n}
    history = {"epoch": [], "train_loss": [], "train_accuracy": [], "val_accuracy": [], "lr": [], "seconds": [],
               "config": config}
    logger.info("training %s on %d images for %d epochs (%s, lr %g)", arch, n, epochs, optimizer, lr)

    with torch_threads(num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, dataset.num_classes, in_channels, (h, w)).to(device)
        channels_last = device == "cpu"  # faster convolutions on the CPU (oneDNN)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(optimizer, model, lr, weight_decay, momentum)
        gen = torch.Generator().manual_seed(seed)
        images = shared_tensor(dataset.images)  # (indexing it below copies)
        labels = torch.from_numpy(np.array(dataset.labels, dtype=np.int64))  # N ints: a copy costs nothing
        if device != "cpu":
            images, labels = images.to(device), labels.to(device)
        step = 0
        for epoch in range(epochs):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=gen)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                if len(idx) < 2 and seen > 0:  # BatchNorm cannot train on a single sample: skip it
                    step += 1
                    progress("train", step, total_steps)
                    continue
                if device != "cpu":
                    idx = idx.to(device)
                x = augment_batch(preprocessing.to_tensor(images[idx], device), pad, flip, gen)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = labels[idx]
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total_steps, lr, schedule)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(idx)
                step += 1
                progress("train", step, total_steps)
            if not math.isfinite(float(loss_sum)):
                raise FlareError(f"Training diverged (loss is not finite) in epoch {epoch + 1}; lower the learning rate.")
            model.eval()
            val_acc = None
            if val_dataset is not None and len(val_dataset):
                val_acc = float(evaluate(model, val_dataset, preprocessing, batch_size=256, device=device)[0])
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(float(loss_sum) / max(1, seen))
            history["train_accuracy"].append(float(correct) / max(1, seen))
            history["val_accuracy"].append(val_acc)
            history["lr"].append(float(opt.param_groups[0]["lr"]))
            history["seconds"].append(round(time.perf_counter() - t0, 2))
            logger.info("epoch %d/%d: loss %.4f, train acc %.4f%s (%.1fs)", epoch + 1, epochs,
                        history["train_loss"][-1], history["train_accuracy"][-1],
                        "" if val_acc is None else f", val acc {val_acc:.4f}", history["seconds"][-1])
        if channels_last:
            model = model.to(memory_format=torch.contiguous_format)
    model.eval()
    return model, history
