"""Validation of attack parameters: every bad value becomes a one-sentence FlareError."""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Optional, Sequence

from flare_core.errors import FlareError

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def merge_params(attack: str, defaults: Mapping[str, Any], params: Optional[Mapping[str, Any]]) -> dict:
    """Defaults overridden by ``params``; an unknown parameter name is a FlareError."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise FlareError(
            f"Unknown parameter {unknown[0]!r} for attack {attack!r}; valid parameters are: {', '.join(defaults)}."
        )
    merged = dict(defaults)
    merged.update(params)
    return merged


def as_int(attack: str, name: str, value: Any, lo: int, hi: Optional[int] = None) -> int:
    """``value`` as an int in [lo, hi] (hi=None: unbounded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise FlareError(f"Parameter {name!r} of attack {attack!r} must be a whole number, got {value!r}.")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        upper = f" and at most {hi}" if hi is not None else ""
        raise FlareError(f"Parameter {name!r} of attack {attack!r} must be at least {lo}{upper}, got {value}.")
    return value


def as_float(attack: str, name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """``value`` as a float in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FlareError(f"Parameter {name!r} of attack {attack!r} must be a number, got {value!r}.")
    value = float(value)
    too_low = value <= lo if lo_open else value < lo
    if too_low or value > hi or value != value:
        bracket = "(" if lo_open else "["
        raise FlareError(f"Parameter {name!r} of attack {attack!r} must be in {bracket}{lo}, {hi}], got {value}.")
    return value


def as_choice(attack: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise FlareError(
            f"Parameter {name!r} of attack {attack!r} must be one of {', '.join(choices)}, got {value!r}."
        )
    return str(value)


def as_position(attack: str, value: Any):
    """A corner name, or a [row, col] pair of the patch's top-left pixel (returned as a list for JSON)."""
    if isinstance(value, str):
        return as_choice(attack, "position", value, CORNERS)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return [as_int(attack, "position", v, 0) for v in value]
    raise FlareError(
        f"Parameter 'position' of attack {attack!r} must be one of {', '.join(CORNERS)} or a (row, col) pair, "
        f"got {value!r}."
    )


def patch_origin(attack: str, position, size: int, margin: int, image_hw: tuple) -> tuple:
    """Top-left (row, col) of a ``size`` x ``size`` patch; FlareError if it does not fit in the image."""
    h, w = image_hw
    if isinstance(position, str):
        row = margin if position.startswith("top") else h - size - margin
        col = margin if position.endswith("left") else w - size - margin
    else:
        row, col = position
    if row < 0 or col < 0 or row + size > h or col + size > w:
        raise FlareError(
            f"A {size}x{size} trigger patch at {position!r} (margin {margin}) does not fit in a {h}x{w} image; "
            f"use a smaller size, margin or another position."
        )
    return int(row), int(col)


#: what the patch attacks (BadNets, Trojan) say of their placement parameters
PATCH_PARAM_HELP: Mapping[str, str] = {
    "position": "'bottom-right', 'bottom-left', 'top-right', 'top-left' or [row, col] of the patch's top-left pixel",
    "margin": "distance in pixels from the image border when position is a corner",
}


def patch_placement(attack: str, p: Mapping[str, Any], default_size: int, image_shape: tuple) -> dict:
    """The validated ``size``, ``position`` and ``margin`` of a patch attack's merged parameters ``p``
    (``size`` None or 'auto': ``default_size``); FlareError if the patch does not fit in (H, W, C) images."""
    size = default_size if p["size"] in (None, "auto") else p["size"]
    placed = {
        "size": as_int(attack, "size", size, 1, min(image_shape[:2])),
        "position": as_position(attack, p["position"]),
        "margin": as_int(attack, "margin", p["margin"], 0),
    }
    patch_origin(attack, placed["position"], placed["size"], placed["margin"], image_shape[:2])
    return placed
