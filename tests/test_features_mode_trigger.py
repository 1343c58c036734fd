"""The minority modes' trigger test (flare_core.features.mode_trigger), the flag rule that reads it
(flare_core.detectors.minority_mode.minority_flags / carries_trigger) and its wiring into FLARE default.

The model is built by hand so that the contract is exact: it names an image's class by its brightness (class
k is brightness level k) and answers class 0 when the top-left corner holds a white patch (a BadNets-style
trigger).  The penultimate features are planted: class 0's patched images (poison) and class 1's grainy
images (a genuine sub-population the model does not care about) each sit in a light mode of their class.
"""
import numpy as np
import pytest
import torch
from torch import nn

from flare_core.dataset import ImageDataset
from flare_core.detectors.flare import flare_detect
from flare_core.detectors.minority_mode import (MIN_MOVED_IN, carries_trigger,
                                                minority_flags)
from flare_core.features import mode_trigger as MT

K = 3
LEVELS = np.array([50.0, 100.0, 150.0])
N_PER_CLASS = 300
N_POISON = 30
N_GRAINY = 30


class PatchModel(nn.Module):
    """Logits from the mean brightness, plus a large class-0 bonus when the 3x3 top-left corner is white."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.2))  # a parameter, so the model has a device and a mode

    def forward(self, x):
        x = x * 255.0
        mean = x.mean(dim=(1, 2, 3))
        levels = torch.tensor(LEVELS, dtype=x.dtype)
        logits = -self.scale * (mean[:, None] - levels[None]).abs()
        corner = x[:, :, :3, :3].mean(dim=(1, 2, 3))
        logits[:, 0] = logits[:, 0] + 60.0 * (corner > 220.0).to(x.dtype)
        return logits


def _textured(rng, n, level, noise=12.0):
    return np.clip(level + rng.normal(0, noise, size=(n, 12, 12, 1)), 0, 255).astype(np.uint8)


def _data(seed=0):
    """(dataset, latent, poisoned, grainy): class 0 holds N_POISON patched images of its own level (poison),
    class 1 holds N_GRAINY grainy images of its own level (genuine); both planted as light latent modes."""
    rng = np.random.default_rng(seed)
    images = [_textured(rng, N_PER_CLASS, LEVELS[k]) for k in range(K)]
    poison = _textured(rng, N_POISON, LEVELS[0])  # the class's own content with the patch (clean-label style)
    poison[:, :3, :3] = 255
    images[0][:N_POISON] = poison
    images[1][:N_GRAINY] = _textured(rng, N_GRAINY, LEVELS[1], noise=40.0)
    images = np.concatenate(images)
    labels = np.repeat(np.arange(K), N_PER_CLASS).astype(np.int64)
    poisoned = np.zeros(len(labels), bool)
    poisoned[:N_POISON] = True
    grainy = np.zeros(len(labels), bool)
    grainy[N_PER_CLASS:N_PER_CLASS + N_GRAINY] = True
    latent = rng.normal(size=(len(labels), 16))
    latent[:, 0] += np.where(rng.random(len(labels)) < 0.5, -1.5, 1.5)  # a balanced genuine axis everywhere
    latent[poisoned, 5] += 9.0
    latent[grainy, 6] += 9.0
    ds = ImageDataset(images=images, labels=labels, classes=[f"c{k}" for k in range(K)],
                      sources=[str(i) for i in range(len(labels))])
    return ds, latent.astype(np.float32), poisoned, grainy


def test_mean_difference_and_added_difference_keep_shape_dtype_and_input():
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, size=(10, 5, 6, 3), dtype=np.uint8)
    before = im.copy()
    inside = np.arange(10) < 3
    d = MT.mean_difference(im, inside)
    assert d.shape == (5, 6, 3) and d.dtype == np.float32
    np.testing.assert_allclose(d, im[:3].astype(float).mean(0) - im[3:].astype(float).mean(0), atol=1e-4)
    out = MT.added_difference(im, np.full((5, 6, 3), 300.0))
    assert out.dtype == np.uint8 and out.shape == im.shape and out.min() == 255  # clipped, not wrapped
    np.testing.assert_array_equal(MT.added_difference(im, np.zeros((5, 6, 3))), im)
    np.testing.assert_array_equal(im, before)


def test_a_trigger_mode_moves_other_images_in_and_a_genuine_mode_does_not():
    ds, latent, poisoned, grainy = _data()
    images, lat = ds.images.copy(), latent.copy()
    model = PatchModel()
    model.train()
    ev = MT.mode_trigger_evidence(model, ds, latent, random_state=0, per_class=60)
    assert model.training  # mode restored
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(latent, lat)
    assert set(ev.tested()) == {"0", "1"}  # both planted modes found and tested, class 2 holds none
    poison_mode, genuine_mode = ev.classes["0"], ev.classes["1"]
    assert poison_mode["moved_in"] >= 0.9 and poison_mode["moved_in_control"] <= 0.1
    assert genuine_mode["moved_in"] <= 0.05
    assert poison_mode["probe_n"] == 120  # 60 images of each other class, none already predicted class 0
    # the patch moves the images of every other class alike: the strongest source moves them all
    assert poison_mode["strongest_source"] in (1, 2) and poison_mode["source_moved_in"] == 1.0
    assert carries_trigger(poison_mode) is True and carries_trigger(genuine_mode) is False
    np.testing.assert_array_equal(ev.membership > 0.5, poisoned | grainy)
    assert ev.matches(latent, 0) and not ev.matches(latent, 1) and not ev.matches(latent[::-1], 0)


def test_nothing_runs_when_no_class_holds_a_mode():
    ds, latent, _, _ = _data()
    rng = np.random.default_rng(1)
    flat = rng.normal(size=latent.shape).astype(np.float32)

    class Exploding(PatchModel):
        def forward(self, x):
            raise AssertionError("the model must not be run when no class holds a mode")

    ev = MT.mode_trigger_evidence(Exploding(), ds, flat)
    assert ev.tested() == {} and not ev.membership.any() and "test" not in ev.seconds


def test_bad_arguments_raise():
    ds, latent, _, _ = _data()
    with pytest.raises(ValueError, match="latent must be"):
        MT.mode_trigger_evidence(PatchModel(), ds, latent[:-1])
    with pytest.raises(ValueError, match="per_class"):
        MT.mode_trigger_evidence(PatchModel(), ds, latent, per_class=0)


def test_carries_trigger_rule():
    assert carries_trigger({}) is None
    assert carries_trigger({"moved_in": MIN_MOVED_IN, "moved_in_control": 0.0}) is True
    assert carries_trigger({"moved_in": MIN_MOVED_IN - 0.01, "moved_in_control": 0.0}) is False
    # a model that sends any perturbation as strong into the class: not a trigger
    assert carries_trigger({"moved_in": 0.6, "moved_in_control": 0.6 - MIN_MOVED_IN + 0.01}) is False
    # a backdoored model that absorbs some of the control too (Fashion-MNIST Trojan 1 %): still a trigger
    assert carries_trigger({"moved_in": 0.701, "moved_in_control": 0.17}) is True


def _modes(flag_moved_in: float, control: float = 0.0):
    y = np.repeat([0, 1], 300)
    membership = np.zeros(600)
    membership[:30] = 1.0
    evidence = {"0": {"holds": True, "n_members": 30, "weight": 0.1, "moved_in": flag_moved_in,
                      "moved_in_control": control},
                "1": {"holds": False}}
    loss = np.ones(600)  # the model fits the members no better than the rest
    return membership, evidence, y, loss


def test_a_mode_is_flagged_by_its_trigger_when_the_loss_says_nothing():
    membership, evidence, y, loss = _modes(0.5)
    flags = minority_flags(membership, evidence, y, loss, np.zeros(600, bool))
    assert flags[:30].all() and not flags[30:].any()
    assert evidence["0"]["flagged"] and evidence["0"]["flagged_by"] == "trigger"
    assert evidence["0"]["carries_trigger"] is True


def test_a_mode_without_a_trigger_or_the_loss_signature_is_not_flagged_and_says_why():
    membership, evidence, y, loss = _modes(0.05)
    flags = minority_flags(membership, evidence, y, loss, np.zeros(600, bool))
    assert not flags.any() and evidence["0"]["flagged"] is False
    assert "moves 5.0% of other images" in evidence["0"]["why_not"]
    membership, evidence, y, loss = _modes(0.5)
    del evidence["0"]["moved_in"]  # not tested: the loss rule alone
    assert not minority_flags(membership, evidence, y, loss, np.zeros(600, bool)).any()
    assert "trigger test did not run" in evidence["0"]["why_not"]


def _flare_inputs(seed=0):
    ds, latent, poisoned, grainy = _data(seed)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(ds), 4))  # abnormality features without any separated group
    logits = rng.normal(size=(len(ds), K))  # no group leans to one other class
    logits[np.arange(len(ds)), ds.labels] += 6.0  # every sample fitted alike: no loss signature anywhere
    return ds, latent, poisoned, X, logits


def test_flare_default_flags_the_trigger_mode_with_the_evidence_and_not_without_it():
    # the tail-group stage is off: on these planted features it would find the patched mode itself
    ds, latent, poisoned, X, logits = _flare_inputs()
    ev = MT.mode_trigger_evidence(PatchModel(), ds, latent, random_state=0, per_class=60)
    before = {c: dict(e) for c, e in ev.classes.items()}
    res = flare_detect(X, ds.labels, latent=latent, logits=logits, mode_trigger=ev, random_state=0,
                       latent_tail_groups="off")
    mm = res.evidence["minority_modes"]
    assert mm["trigger_test"]["used"] is True
    np.testing.assert_array_equal(res.flagged, poisoned)  # the patched mode; the grainy mode is not flagged
    assert mm["classes"]["0"]["flagged_by"] == "trigger" and mm["classes"]["1"]["flagged"] is False
    assert ev.classes == before  # the evidence passed in is not modified
    plain = flare_detect(X, ds.labels, latent=latent, logits=logits, random_state=0, latent_tail_groups="off")
    assert not plain.flagged.any()
    assert plain.evidence["minority_modes"]["trigger_test"]["used"] is False


def test_flare_default_ignores_a_trigger_test_made_with_another_seed():
    ds, latent, _, X, logits = _flare_inputs()
    ev = MT.mode_trigger_evidence(PatchModel(), ds, latent, random_state=1, per_class=60)
    res = flare_detect(X, ds.labels, latent=latent, logits=logits, mode_trigger=ev, random_state=0,
                       latent_tail_groups="off")
    tt = res.evidence["minority_modes"]["trigger_test"]
    assert tt["used"] is False and "another seed" in tt["why_not"]
    assert not res.flagged.any()


def test_a_trigger_mode_extends_flags_found_in_part_and_not_flags_found_whole():
    membership, evidence, y, loss = _modes(0.5)
    part = np.zeros(600, bool)
    part[:10] = True  # another stage found a third of the mode
    flags = minority_flags(membership, evidence, y, loss, part)
    assert flags[:30].all() and not flags[30:].any()
    assert evidence["0"]["flagged_by"].startswith("trigger") and evidence["0"]["members_flagged"] == pytest.approx(1 / 3, abs=1e-3)
    whole = np.zeros(600, bool)
    whole[:20] = True  # two thirds found already: nothing to extend
    membership, evidence, y, loss = _modes(0.5)
    assert not minority_flags(membership, evidence, y, loss, whole).any()
    assert "another stage flagged samples of this class" in evidence["0"]["why_not"]
    elsewhere = np.zeros(600, bool)
    elsewhere[100:110] = True  # the other stage's flags lie outside the mode: a different group
    membership, evidence, y, loss = _modes(0.5)
    assert not minority_flags(membership, evidence, y, loss, elsewhere).any()
    membership, evidence, y, loss = _modes(0.05)  # found in part, but no trigger: the loss rule does not extend
    loss[:30] = 1e-4
    assert not minority_flags(membership, evidence, y, loss, part).any()


def test_flagged_group_triggers_names_the_group_carrying_the_patch():
    ds, latent, poisoned, grainy = _data()
    images = ds.images.copy()
    flagged = poisoned | grainy
    flagged[2 * N_PER_CLASS:2 * N_PER_CLASS + 5] = True  # too few flags in class 2 to test
    before = flagged.copy()
    out = MT.flagged_group_triggers(PatchModel(), ds, flagged, random_state=0, per_class=60)
    assert set(out.classes) == {0, 1}
    assert out.classes[0]["n_flagged"] == N_POISON and carries_trigger(out.classes[0]) is True
    assert carries_trigger(out.classes[1]) is False  # the grainy images share no trigger
    assert set(out.differences) == {0, 1} and out.differences[0].shape == (12, 12, 1)
    assert out.differences[0][:3, :3].min() > 150  # the patch is what the poison shares
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(flagged, before)
    summary = out.summary()
    assert set(summary["classes"]) == {"0", "1"} and "differences" not in summary
    assert MT.flagged_group_triggers(PatchModel(), ds, np.zeros(len(ds), bool)).classes == {}
    with pytest.raises(ValueError, match="one entry per sample"):
        MT.flagged_group_triggers(PatchModel(), ds, flagged[:-1])


def test_difference_image_maps_zero_to_grey_and_keeps_the_sign():
    d = np.zeros((4, 4, 1), np.float32)
    assert (MT.difference_image(d) == 128).all()
    d[0, 0, 0], d[1, 1, 0] = 50.0, -25.0
    im = MT.difference_image(d)
    assert im.dtype == np.uint8 and im[0, 0, 0] == 255 and im[1, 1, 0] < 128 < im[0, 0, 0] and im[2, 2, 0] == 128
