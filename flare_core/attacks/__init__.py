"""The backdoor lab: poisoning attacks on image datasets, with ground truth.

Every attack is a pure, seeded function of uint8 (N, H, W, C) images; see :data:`ATTACKS`.
"""
from flare_core.attacks.ground_truth import GroundTruth
from flare_core.attacks.poison import apply_trigger, poison_dataset, poison_test_set, poison_test_set_like
from flare_core.attacks.registry import ATTACKS, MODES, AttackSpec, get_attack
from flare_core.attacks.selection import MAX_RATE, MIN_RATE

__all__ = [
    "ATTACKS", "MODES", "MIN_RATE", "MAX_RATE", "AttackSpec", "GroundTruth", "get_attack",
    "apply_trigger", "poison_dataset", "poison_test_set", "poison_test_set_like",
]
