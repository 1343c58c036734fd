"""The backdoor lab: poisoning attacks on image datasets, with ground truth.

Every attack is a pure, seeded function of uint8 (N, H, W, C) images; see :data:`ATTACKS`.

Learnability with the defaults (one check, Fashion-MNIST, small 3-conv CNN, 12 epochs, no augmentation,
target 0, seed 0; clean accuracy 0.91-0.92 in every case), attack success rate on the triggered test set:
BadNets 1.00 (rate 0.1) / 1.00 (0.01), all-to-all 0.83; Blended 1.00 / 0.99; Trojan-style 1.00 / 1.00;
WaNet 0.98 (0.1), 0.97 with cross_ratio=2; SIG (clean-label) 0.56 (rate 0.05) / 0.34 (0.02).
"""
from flare_core.attacks.ground_truth import GroundTruth
from flare_core.attacks.poison import apply_trigger, poison_dataset, poison_test_set, poison_test_set_like
from flare_core.attacks.registry import ATTACKS, MODES, AttackSpec, get_attack
from flare_core.attacks.selection import MAX_RATE, MIN_RATE

__all__ = [
    "ATTACKS", "MODES", "MIN_RATE", "MAX_RATE", "AttackSpec", "GroundTruth", "get_attack",
    "apply_trigger", "poison_dataset", "poison_test_set", "poison_test_set_like",
]
