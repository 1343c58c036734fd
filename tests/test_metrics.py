"""Metrics on hand-computed cases, including the edge cases."""
import math

import numpy as np
import pytest

from flare_core.metrics import attack_success_rate, benign_accuracy, detection_metrics


def test_benign_accuracy():
    assert benign_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert benign_accuracy(np.array([3]), np.array([3])) == 1.0


def test_benign_accuracy_empty_is_nan():
    assert math.isnan(benign_accuracy([], []))


def test_benign_accuracy_length_mismatch():
    with pytest.raises(ValueError):
        benign_accuracy([0, 1], [0])


def test_benign_accuracy_needs_1d():
    with pytest.raises(ValueError):
        benign_accuracy(np.zeros((2, 2)), np.zeros((2, 2)))


def test_asr_scalar_and_per_sample_target():
    pred = np.array([5, 5, 1, 5])
    assert attack_success_rate(pred, 5) == 0.75
    assert attack_success_rate(pred, np.array([5, 5, 5, 1])) == 0.5


def test_asr_leaves_out_samples_of_the_target_class():
    pred = np.array([5, 5, 1, 5])
    true = np.array([5, 0, 0, 0])  # the first is already class 5: not counted
    assert attack_success_rate(pred, 5, true_labels=true) == pytest.approx(2 / 3)


def test_asr_nothing_left_is_nan():
    assert math.isnan(attack_success_rate([5, 5], 5, true_labels=[5, 5]))
    assert math.isnan(attack_success_rate([], 5))


def test_asr_length_mismatch():
    with pytest.raises(ValueError):
        attack_success_rate([1, 2, 3], [1, 2])


def test_detection_metrics_hand_computed():
    flagged = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    truth = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.75, 0.1, 0.2, 0.3, 0.4])
    m = detection_metrics(flagged, truth, scores)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 4, 1)
    assert m["n"] == 8 and m["n_positive"] == 3 and m["n_flagged"] == 3
    assert m["tpr"] == pytest.approx(2 / 3)
    assert m["fpr"] == pytest.approx(1 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # positives 0.9, 0.8, 0.75 vs negatives 0.7, 0.4, 0.3, 0.2, 0.1: every pair ranked right
    assert m["auroc"] == pytest.approx(1.0)


def test_auroc_with_ties_and_mistakes():
    truth = np.array([1, 0, 1, 0], bool)
    scores = np.array([0.5, 0.5, 0.2, 0.9])
    # pairs (pos, neg): (0.5,0.5)=0.5, (0.5,0.9)=0, (0.2,0.5)=0, (0.2,0.9)=0 -> 0.5/4
    m = detection_metrics(scores > 0.4, truth, scores)
    assert m["auroc"] == pytest.approx(0.125)


def test_nothing_flagged():
    m = detection_metrics(np.zeros(4, bool), np.array([1, 0, 0, 1], bool), np.zeros(4))
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 0, 2, 2)
    assert m["precision"] is None and m["n_flagged"] == 0
    assert m["tpr"] == 0.0 and m["fpr"] == 0.0 and m["f1"] == 0.0
    assert m["auroc"] == pytest.approx(0.5)


def test_no_positives():
    m = detection_metrics(np.array([1, 0, 0], bool), np.zeros(3, bool), np.array([0.9, 0.1, 0.2]))
    assert m["tpr"] is None and m["auroc"] is None
    assert m["fpr"] == pytest.approx(1 / 3) and m["precision"] == 0.0 and m["f1"] == 0.0


def test_no_positives_nothing_flagged():
    m = detection_metrics(np.zeros(3, bool), np.zeros(3, bool))
    assert m["tpr"] is None and m["precision"] is None and m["f1"] is None and m["fpr"] == 0.0


def test_all_positive():
    m = detection_metrics(np.array([1, 1], bool), np.array([1, 1], bool), np.array([0.3, 0.4]))
    assert m["fpr"] is None and m["tpr"] == 1.0 and m["precision"] == 1.0 and m["auroc"] is None


def test_without_scores_auroc_is_none():
    assert detection_metrics([True, False], [True, False])["auroc"] is None


def test_detection_metrics_inputs_unchanged():
    flagged, truth, scores = np.array([1, 0, 1]), np.array([1, 0, 0]), np.array([0.5, 0.1, 0.3])
    copies = flagged.copy(), truth.copy(), scores.copy()
    detection_metrics(flagged, truth, scores)
    for a, b in zip((flagged, truth, scores), copies):
        np.testing.assert_array_equal(a, b)


def test_detection_length_mismatch():
    with pytest.raises(ValueError):
        detection_metrics([True], [True, False])


def test_detection_scores_length_mismatch():
    with pytest.raises(ValueError):
        detection_metrics([True, False], [True, False], [0.1])


def test_detection_values_are_plain_python():
    m = detection_metrics(np.array([1, 0], bool), np.array([1, 0], bool), np.array([0.9, 0.1]))
    assert all(v is None or type(v) in (int, float) for v in m.values())
