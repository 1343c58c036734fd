"""The attack registry shared by the CLI and the dashboard."""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

from flare_core.attacks import badnets, blended, sig, trojan, wanet
from flare_core.attacks._apply import Trigger
from flare_core.errors import FlareError

MODES = ("all-to-one", "all-to-all")


@dataclass(frozen=True)
class AttackSpec:
    """One attack: how to build its trigger, its default parameters and how it labels poisons.

    make_trigger(image_shape, *, seed=0, **params) -> Trigger, a callable mapping an (N, H, W, C) uint8
    batch to a new triggered batch (the input is never modified).
    resolve_params(image_shape, params) -> dict of every parameter, defaults filled in, validated.
    defaults: parameter defaults (None means "chosen from the image size", see param_help).
    clean_label: poisons only target-class images and keeps their labels (SIG).
    modes: the poisoning modes the attack supports.
    supports_cross: the trigger has ``cross(images, seed)`` (WaNet noise mode, via ``cross_ratio``).
    """

    name: str
    title: str
    summary: str
    reference: str
    make_trigger: Callable[..., Trigger]
    resolve_params: Callable[[tuple, Optional[Mapping[str, Any]]], dict]
    defaults: Mapping[str, Any]
    param_help: Mapping[str, str]
    clean_label: bool = False
    modes: tuple = MODES
    supports_cross: bool = False


def _spec(module, title: str, summary: str, reference: str, **kw) -> AttackSpec:
    return AttackSpec(
        name=module.NAME,
        title=title,
        summary=summary,
        reference=reference,
        make_trigger=module.make_trigger,
        resolve_params=module.resolve_params,
        defaults=MappingProxyType(dict(module.DEFAULTS)),
        param_help=MappingProxyType(dict(module.PARAM_HELP)),
        **kw,
    )


ATTACKS: Mapping[str, AttackSpec] = MappingProxyType(
    {
        "badnets": _spec(
            badnets,
            "BadNets",
            "A small checkerboard patch in a corner.",
            "Gu, Dolan-Gavitt & Garg, BadNets, 2017 (arXiv 1708.06733)",
        ),
        "blended": _spec(
            blended,
            "Blended",
            "Random noise (or an image) blended over the whole image with a low weight.",
            "Chen et al., Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning, 2017 (arXiv 1712.05526)",
        ),
        "trojan": _spec(
            trojan,
            "Trojan-style patch",
            "A fixed 7x7 watermark-like glyph in a corner (not optimised against a model, unlike TrojanNN).",
            "patch in the style of Liu et al., Trojaning Attack on Neural Networks, NDSS 2018",
        ),
        "wanet": _spec(
            wanet,
            "WaNet",
            "A small smooth random warp of the whole image.",
            "Nguyen & Tran, WaNet - Imperceptible Warping-based Backdoor Attack, ICLR 2021",
            supports_cross=True,
        ),
        "sig": _spec(
            sig,
            "SIG (clean-label)",
            "A horizontal sinusoid added to target-class images; labels stay correct.",
            "Barni, Kallas & Tondi, A New Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning, ICIP 2019",
            clean_label=True,
            modes=("all-to-one",),
        ),
    }
)


def get_attack(name: str) -> AttackSpec:
    """The registered attack called ``name``; FlareError listing the choices otherwise."""
    spec = ATTACKS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise FlareError(f"Unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}.")
    return spec
