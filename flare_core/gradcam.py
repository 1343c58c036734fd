"""Class activation maps (pytorch-grad-cam) for eager, TorchScript and torch.export models.

Graph models are explained through their tapped fx copy (see :mod:`flare_core.features.graph`): the
CAM library gets the copy and an ``nn.Identity`` tap as target layer. Gradients are taken with respect
to the input (parameters are temporarily frozen, so no ``.grad`` is left on the user's model); all
hooks are released and every submodule's training flag is restored afterwards.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from flare_core.errors import FlareError
from flare_core.features.hooks import unknown_name_error
from flare_core.features.view import ModelView, model_view, module_device, repeat_batch, unwrap
from flare_core.models.loaded import LoadedModel

logger = logging.getLogger(__name__)

METHODS = ("gradcam", "gradcam++", "eigencam", "scorecam", "xgradcam", "layercam")


def _cam_class(method: str):
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, XGradCAM

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM, "scorecam": ScoreCAM,
               "xgradcam": XGradCAM, "layercam": LayerCAM}
    if method not in classes:
        raise FlareError(f"Unknown CAM method {method!r}; choose one of {', '.join(METHODS)}.")
    return classes[method]


def _view(model: LoadedModel, images: Optional[np.ndarray] = None) -> ModelView:
    example = None
    if images is not None:
        example = model.preprocessing.to_tensor(images[:2], module_device(unwrap(model)[0]))
    return model_view(model, example)


def list_cam_layers(model: LoadedModel) -> list:
    """Names of layers Grad-CAM can target, in execution order: for eager models every submodule run
    once with a (B, C, H, W) output (H*W > 1); for graph models conv, batch-norm, activation and
    residual-add outputs."""
    return [p.name for p in _view(model).of_kind("cam")]


def default_target_layer(model: LoadedModel) -> str:
    """The last convolutional block: the last CAM-able layer executed (for a ResNet the last stage)."""
    names = list_cam_layers(model)
    if not names:
        raise FlareError("This model has no convolutional layer with a spatial output; Grad-CAM needs one.")
    return names[-1]


def _as_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise FlareError(f"Images must be a (N, H, W, C) uint8 array, got {images.dtype} {images.shape}.")
    return images[..., None] if images.ndim == 3 else images


def _targets(targets, n: int) -> Optional[list]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if targets is None:
        return None
    if isinstance(targets, (int, np.integer)):
        targets = [int(targets)] * n
    targets = [int(t) for t in targets]
    if len(targets) != n:
        raise FlareError(f"Got {len(targets)} targets for {n} images; give one class index per image.")
    return [ClassifierOutputTarget(t) for t in targets]


def _resize(cams: np.ndarray, size: tuple) -> np.ndarray:
    if cams.shape[1:] == tuple(size):
        return cams
    t = torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32))[:, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def gradcam(model: LoadedModel, images: np.ndarray, *, target_layer: Optional[str] = None,
            method: str = "gradcam", targets: Union[None, int, Sequence[int]] = None,
            batch_size: int = 32, return_logits: bool = False) -> tuple:
    """Class activation maps of ``images`` (N, H, W, C) uint8.

    Returns (cams (N, H, W) float32 in [0, 1] at the images' size, predicted labels (N,) int64), and with
    ``return_logits`` also the model's outputs (N, K) float32 from the same forward pass.
    ``targets``: None explains the predicted class; an int or one class index per image otherwise.
    ``target_layer``: a name from :func:`list_cam_layers` (default :func:`default_target_layer`).
    """
    cam_class = _cam_class(method)
    images = _as_batch(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    view = _view(model, images)
    name = target_layer or default_target_layer(model)
    point = view.find(name, ("cam",))
    if point is None:
        raise unknown_name_error(name, list_cam_layers(model), what="Grad-CAM layer")
    runnable = view.module
    target = runnable.get_submodule(point.target)
    device = module_device(runnable)
    all_targets = _targets(targets, len(images))

    params = list(runnable.parameters())
    grad_flags = [p.requires_grad for p in params]
    mode_flags = {m: m.training for m in runnable.modules()}
    cams, preds, outputs = [], [], []
    try:
        for p in params:
            p.requires_grad_(False)
        step = view.fixed_batch or batch_size
        for start in range(0, len(images), step):
            x = model.preprocessing.to_tensor(images[start:start + step], device)
            n = len(x)
            batch_targets = all_targets[start:start + step] if all_targets is not None else None
            if view.fixed_batch is not None and n < step:  # graphs exported with a static batch size
                x = repeat_batch(x, step)
                batch_targets = [batch_targets[i % n] for i in range(step)] if batch_targets else None
            cam = cam_class(model=runnable, target_layers=[target])
            try:
                with torch.inference_mode(False), torch.enable_grad():
                    out = cam(input_tensor=x.requires_grad_(True), targets=batch_targets)
                logits = cam.outputs.detach()[:n].float().cpu()
                preds.append(logits.argmax(dim=-1).numpy())
                outputs.append(logits.numpy())
                cams.append(np.asarray(out, dtype=np.float32)[:n])
            finally:
                cam.activations_and_grads.release()
                cam.outputs = None
    finally:
        for p, flag in zip(params, grad_flags):
            p.requires_grad_(flag)
        for m, flag in mode_flags.items():
            m.training = flag
    result = np.clip(_resize(np.concatenate(cams), images.shape[1:3]), 0.0, 1.0)
    result, preds = result.astype(np.float32, copy=False), np.concatenate(preds).astype(np.int64)
    return (result, preds, np.concatenate(outputs).astype(np.float32)) if return_logits else (result, preds)


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The CAM as a JET heat map blended over ``image`` (H, W[, C]) uint8; returns (H, W, 3) uint8 RGB."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.dtype != np.uint8 or image.shape[2] != 3:
        raise FlareError(f"overlay needs an (H, W, C) uint8 image, got {image.dtype} {image.shape}.")
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != image.shape[:2]:
        cam = _resize(cam[None], image.shape[:2])[0]
    return show_cam_on_image(image.astype(np.float32) / 255.0, np.clip(cam, 0.0, 1.0), use_rgb=True,
                             image_weight=image_weight)
