"""The Adversarial Robustness Toolbox's ActivationDefence and SpectralSignatureDefense on our models.

ART is an outside reference for our own AC/SS baselines: it is run unmodified through its public API.
ART takes the activations of the *last* child module of a PyTorch model (``layer_names[-1]``); to make
that the penultimate features (what both defences are defined on, and what our baselines use) the
model is wrapped in :class:`PenultimateLast`, whose last registered child is the feature body, while
``forward`` still returns the model's logits.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


class _Body(nn.Module):
    """The model up to (and including) the input of its last Linear layer, flattened."""

    def __init__(self, model: nn.Module, head: nn.Linear):
        super().__init__()
        self.model = model
        self.head = head
        self._captured: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box = {}

        def grab(_m, inputs):
            box["x"] = inputs[0]

        h = self.head.register_forward_pre_hook(grab)
        try:
            logits = self.model(x)
        finally:
            h.remove()
        self._captured = logits
        return torch.flatten(box["x"], 1)


class PenultimateLast(nn.Module):
    """Same logits as ``model``; its last registered child (``body``) outputs the penultimate features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("the model has no Linear layer")
        self.body = _Body(model, linears[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.body(x)
        return self.body._captured


def _classifier(model: nn.Module, input_shape: tuple, num_classes: int, device: str):
    from art.estimators.classification import PyTorchClassifier

    wrapped = PenultimateLast(model).eval()
    return PyTorchClassifier(model=wrapped, loss=nn.CrossEntropyLoss(), input_shape=input_shape,
                             nb_classes=num_classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if str(device).startswith("cuda") else "cpu")


def _inputs(loaded, dataset) -> np.ndarray:
    """float32 NCHW model inputs (the model's own preprocessing), in chunks to bound peak memory."""
    parts = [loaded.preprocessing.to_tensor(dataset.images[i:i + 4096], "cpu").numpy()
             for i in range(0, len(dataset), 4096)]
    return np.concatenate(parts).astype(np.float32, copy=False)


def run_art(loaded, dataset, *, expected_poison: float = 0.1, eps_multiplier: float = 1.5, seed: int = 0,
            x: Optional[np.ndarray] = None) -> dict:
    """Run ART's two defences; returns {'art-ac': {...}, 'art-ss': {...}} with flagged (bool array),
    scores (array or None), seconds, params."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

    if x is None:
        x = _inputs(loaded, dataset)
    y = np.eye(dataset.num_classes, dtype=np.float32)[dataset.labels]
    clf = _classifier(loaded.module, tuple(x.shape[1:]), dataset.num_classes, loaded.device)
    out = {}

    np.random.seed(seed)  # ART's MiniBatchKMeans takes no random_state
    t0 = time.perf_counter()
    ac = ActivationDefence(clf, x, y)
    _, is_clean = ac.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis="smaller")
    out["art-ac"] = {"flagged": np.asarray(is_clean) == 0, "scores": None, "seconds": time.perf_counter() - t0,
                     "params": {"nb_clusters": 2, "nb_dims": 10, "reduce": "PCA", "cluster_analysis": "smaller"},
                     "note": "ART's ActivationDefence gives no per-sample score (AUROC n/a)"}

    t0 = time.perf_counter()
    ss = SpectralSignatureDefense(clf, x, y, expected_pp_poison=expected_poison, batch_size=256,
                                  eps_multiplier=eps_multiplier)
    _, is_clean = ss.detect_poison()
    seconds = time.perf_counter() - t0
    # ART reports scores only for the samples it flags; score every sample with ART's own
    # spectral_signature_scores on the same activations, per class, for the AUROC.
    feats = clf.get_activations(x, layer=len(clf.layer_names) - 1, batch_size=256).reshape(len(x), -1)
    scores = np.zeros(len(x))
    for k in range(dataset.num_classes):
        idx = np.flatnonzero(dataset.labels == k)
        if len(idx):
            scores[idx] = SpectralSignatureDefense.spectral_signature_scores(feats[idx]).ravel()
    out["art-ss"] = {"flagged": np.asarray(is_clean) == 0, "scores": scores, "seconds": seconds,
                     "params": {"expected_pp_poison": expected_poison, "eps_multiplier": eps_multiplier},
                     "note": "scores from ART's spectral_signature_scores per class (not comparable across classes)"}
    return out
