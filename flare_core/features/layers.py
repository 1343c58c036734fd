"""The hidden layers FLARE reads, for any model format."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from flare_core.features.view import ModelLike, Point, model_view


@dataclass(frozen=True)
class LayerInfo:
    """A layer FLARE reads.

    kind 'bn': the INPUT of a batch-norm layer, compared with its running statistics (stats 'running').
    kind 'block': the output of a conv / norm block, compared with statistics estimated from the data
    in a first pass (stats 'data'). ``channel_dim`` is 1 for (B, C, ...) and -1 for (B, ..., C)
    (LayerNorm / Linear outputs).
    """

    name: str
    kind: str
    channels: int
    stats: str
    channel_dim: int = 1


def _info(point: Point) -> LayerInfo:
    stats = "running" if point.kind == "bn" else "data"
    return LayerInfo(point.name, point.kind, point.channels, stats, point.channel_dim)


def feature_points(model: ModelLike, example_input: Optional[torch.Tensor] = None,
                   kind: Optional[str] = None) -> list:
    """The view points behind :func:`list_layers` (internal helper shared with the extractors)."""
    view = model_view(model, example_input)
    if kind is None:
        kind = "bn" if view.of_kind("bn") else "block"
    if kind not in ("bn", "block"):
        raise ValueError(f"kind must be 'bn', 'block' or None, got {kind!r}.")
    return view.of_kind(kind)


def list_layers(model: ModelLike, example_input: Optional[torch.Tensor] = None,
                kind: Optional[str] = None) -> list:
    """Layers for FLARE, shallow to deep (execution order).

    Every BatchNorm layer with running statistics; if the model has none (GroupNorm/LayerNorm/plain
    conv nets, ViTs), every conv / norm block output instead (plain MLPs: every Linear output but the
    classifier's). ``kind`` ('bn' | 'block') forces one family. ``example_input`` is a (B, C, H, W)
    batch the model accepts; without it one is built from the preprocessing or inferred.
    Names: module names for eager models, buffer/weight owner paths (or node names) for graph models.
    """
    return [_info(p) for p in feature_points(model, example_input, kind)]
