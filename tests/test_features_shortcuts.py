"""The shortcut probe and counter test (flare_core.features.shortcuts), the stage's rule
(flare_core.detectors.shortcut_stage) and its wiring into FLARE default.

The model is built by hand so that the contract is exact: it classifies an image by its brightness
(the content: class k is brightness level k) and, when the image is smoother than any natural image of
the data (its fine grain removed), it answers class 0 instead: a smoothing trigger. The poisoned samples
are smoothed images of other classes labelled 0, as WaNet's bilinear resampling makes them.
"""
import numpy as np
import pytest
import torch
from torch import nn

from flare_core.dataset import ImageDataset
from flare_core.detectors.flare import FlareDetector, flare_detect
from flare_core.detectors.shortcut_stage import check_evidence, shortcut_flags
from flare_core.errors import FlareError
from flare_core.features import shortcuts as S

K = 5
LEVELS = np.linspace(40, 215, K)


class BrightnessModel(nn.Module):
    """Logits from the mean brightness; ``trigger`` adds a large class-0 bonus to smooth images."""

    def __init__(self, trigger: bool):
        super().__init__()
        self.trigger = trigger
        self.scale = nn.Parameter(torch.tensor(0.2))  # a parameter, so the model has a device and a mode

    def forward(self, x):
        x = x * 255.0
        mean = x.mean(dim=(1, 2, 3))
        levels = torch.tensor(LEVELS, dtype=x.dtype)
        logits = -self.scale * (mean[:, None] - levels[None]).abs()
        if self.trigger:
            grain = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
            logits[:, 0] = logits[:, 0] + 60.0 * (grain < 15.0).to(x.dtype)
        return logits


def textured(rng, n, level):
    return np.clip(level + rng.normal(0, 25, size=(n, 12, 12, 1)), 0, 255).astype(np.uint8)


def dataset(seed=0, n_per_class=60, n_poison=15):
    rng = np.random.default_rng(seed)
    images = [textured(rng, n_per_class, LEVELS[k]) for k in range(K)]
    labels = [np.full(n_per_class, k) for k in range(K)]
    truth = [np.zeros(n_per_class, bool) for _ in range(K)]
    if n_poison:
        src = textured(rng, n_poison, LEVELS[3])
        images.append(S.smooth(src, sigma=0.6))
        labels.append(np.zeros(n_poison, int))
        truth.append(np.ones(n_poison, bool))
    images = np.concatenate(images)
    labels = np.concatenate(labels).astype(np.int64)
    ds = ImageDataset(images=images, labels=labels, classes=[f"c{k}" for k in range(K)],
                      sources=[str(i) for i in range(len(labels))])
    return ds, np.concatenate(truth)


def test_transforms_keep_shape_dtype_and_input():
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, size=(7, 9, 11, 3), dtype=np.uint8)
    before = im.copy()
    for fn in (S.smooth, S.sharpen):
        out = fn(im)
        assert out.shape == im.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(im, before)


def test_transforms_leave_a_flat_image_flat_and_move_grain_opposite_ways():
    flat = np.full((2, 8, 8, 1), 100, np.uint8)
    np.testing.assert_array_equal(S.smooth(flat), flat)
    np.testing.assert_array_equal(S.sharpen(flat), flat)
    im = textured(np.random.default_rng(1), 4, 128)
    grain = lambda a: np.abs(np.diff(a.astype(float), axis=1)).mean()  # noqa: E731
    assert grain(S.smooth(im)) < grain(im) < grain(S.sharpen(im))


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 1), np.float32), np.zeros((8, 8, 1), np.uint8),
                                 np.zeros((2, 2, 8, 1), np.uint8)])
def test_transforms_refuse_bad_images(bad):
    with pytest.raises(ValueError):
        S.smooth(bad)


def test_moved_in_shares_counts_only_images_of_other_classes():
    before = np.array([0, 1, 1, 2, 2, 2])
    after = np.array([0, 0, 0, 2, 0, 1])
    shares = S.moved_in_shares(before, after, 3)
    np.testing.assert_allclose(shares, [3 / 5, 1 / 4, 0.0])


def test_probe_finds_the_smoothing_trigger_and_the_counter_test_the_poison():
    ds, truth = dataset()
    images = ds.images.copy()
    model = BrightnessModel(trigger=True).train()
    ev = S.shortcut_evidence(model, ds, per_class=40)
    assert ev.found and ev.transform == "smooth" and ev.counter == "sharpen" and ev.target == 0
    assert ev.moved_in["smooth"][0] >= 0.9
    assert model.training  # mode restored
    np.testing.assert_array_equal(ds.images, images)  # data untouched
    members = ds.labels == 0
    assert np.isnan(ev.drop[~members]).all() and (ev.after_class[~members] == -1).all()
    flags = shortcut_flags(ev.drop, ev.after_class, ds.labels, ev.target)
    np.testing.assert_array_equal(flags, truth)
    assert (ev.after_class[truth] == 3).all()  # the poison falls back to the class its content shows
    summary = ev.summary()
    assert summary["found"] and summary["strongest"]["smooth"]["class"] == 0


def test_probe_finds_nothing_on_a_model_without_the_trigger():
    ds, _ = dataset()
    ev = S.shortcut_evidence(BrightnessModel(trigger=False), ds, per_class=40)
    assert not ev.found and ev.target is None
    assert np.isnan(ev.drop).all()
    assert not shortcut_flags(ev.drop, ev.after_class, ds.labels, ev.target).any()


@pytest.mark.parametrize("kw", [{"bar": 0.0}, {"bar": 1.5}, {"per_class": 0}, {"per_class": 2.5}])
def test_probe_refuses_bad_arguments(kw):
    ds, _ = dataset(n_poison=0)
    with pytest.raises(ValueError):
        S.probe_shortcuts(BrightnessModel(trigger=False), ds, **kw)


def test_rule_needs_a_group_and_a_flip():
    labels = np.zeros(30, int)
    drop = np.full(30, 5.0)
    after = np.ones(30, int)
    assert shortcut_flags(drop, after, labels, 0).all()
    assert not shortcut_flags(drop, after, labels, 0, min_group=31).any()
    assert not shortcut_flags(drop, np.zeros(30, int), labels, 0).any()  # still the label: no flip
    assert not shortcut_flags(drop, after, labels, None).any()
    assert not shortcut_flags(np.full(30, 2.9), after, labels, 0).any()


def test_rule_refuses_bad_arguments():
    with pytest.raises(FlareError):
        shortcut_flags(np.zeros(3), np.zeros(2), np.zeros(3), 0)
    with pytest.raises(FlareError):
        shortcut_flags(np.zeros(3), np.zeros(3), np.zeros(3), 0, min_drop=0)


def _features(ds):
    """Per-layer columns and penultimate features with no structure: only the shortcut stage can find."""
    rng = np.random.default_rng(5)
    n = len(ds)
    return rng.normal(size=(n, 4)), rng.normal(size=(n, 8)), rng.normal(size=(n, K))


def test_flare_default_flags_what_the_shortcut_stage_finds():
    ds, truth = dataset(n_per_class=120, n_poison=20)
    ev = S.shortcut_evidence(BrightnessModel(trigger=True), ds, per_class=40)
    X, P, logits = _features(ds)
    det = FlareDetector(n_epochs=50).fit(X, ds.labels, latent=P, logits=logits, shortcut=ev)
    np.testing.assert_array_equal(det.flagged_, truth)
    rep = det.report_["shortcut"]
    assert rep["used"] and rep["found"] and rep["n_flagged"] == truth.sum() and rep["target"] == 0
    assert "shortcut" in det.report_["representation"]
    assert det.scores_[truth].min() > det.scores_[~truth].max()  # flagged first
    off = FlareDetector(n_epochs=50, use_shortcut="off").fit(X, ds.labels, latent=P, logits=logits, shortcut=ev)
    assert not off.flagged_.any() and off.report_["shortcut"]["why_not"] == "use_shortcut='off'"
    faithful = flare_detect(X, ds.labels, mode="faithful", n_epochs=50, shortcut=ev)
    assert not faithful.report["shortcut"]["used"]


def test_flare_default_reports_a_model_without_a_shortcut():
    ds, _ = dataset(n_per_class=120, n_poison=0)
    ev = S.shortcut_evidence(BrightnessModel(trigger=False), ds, per_class=40)
    X, P, logits = _features(ds)
    det = FlareDetector(n_epochs=50).fit(X, ds.labels, latent=P, logits=logits, shortcut=ev)
    assert not det.flagged_.any()
    assert det.report_["shortcut"]["used"] and not det.report_["shortcut"]["found"]
    assert "neither smoothing nor sharpening acts as a trigger" in det.evidence_["conclusion"]


def test_flare_default_refuses_evidence_of_another_dataset():
    ds, _ = dataset(n_per_class=120, n_poison=20)
    ev = S.shortcut_evidence(BrightnessModel(trigger=True), ds, per_class=40)
    X, P, logits = _features(ds)
    with pytest.raises(FlareError, match="same dataset"):
        check_evidence(ev, len(ds) - 1)
    with pytest.raises(FlareError, match="same dataset"):
        FlareDetector(n_epochs=50).fit(X[:-1], ds.labels[:-1], latent=P[:-1], logits=logits[:-1], shortcut=ev)


def test_the_run_report_says_what_the_probe_found():
    from flare_core.report import shortcut_sentence

    ds, _ = dataset(n_per_class=120, n_poison=20)
    ev = S.shortcut_evidence(BrightnessModel(trigger=True), ds, per_class=40)
    X, P, logits = _features(ds)
    det = FlareDetector(n_epochs=50).fit(X, ds.labels, latent=P, logits=logits, shortcut=ev)
    text = shortcut_sentence(det.report_, ds.classes)
    assert "Smoothing sends 100% of the other images into c0: a shortcut" in text and "20 sample(s)" in text
    none = S.shortcut_evidence(BrightnessModel(trigger=False), ds, per_class=40)
    det = FlareDetector(n_epochs=50).fit(X, ds.labels, latent=P, logits=logits, shortcut=none)
    assert "Neither smoothing nor sharpening acts as a trigger" in shortcut_sentence(det.report_, ds.classes)
    assert shortcut_sentence(FlareDetector(n_epochs=50, use_shortcut="off").fit(
        X, ds.labels, latent=P, logits=logits, shortcut=none).report_, ds.classes) == ""


def test_the_stage_adds_nothing_beside_a_population_the_other_stages_separate():
    ds, truth = dataset(n_per_class=120, n_poison=20)
    ev = S.shortcut_evidence(BrightnessModel(trigger=True), ds, per_class=40)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(len(ds), 4))
    group = np.flatnonzero(ds.labels == 2)[:40]
    X[group, :2] -= 5.0  # a per-layer group of 6 % of the samples (no latent inputs: no cross-check)
    det = FlareDetector(n_epochs=50).fit(X, ds.labels, shortcut=ev)
    assert det.flagged_[group].all() and not det.flagged_[truth].any()
    rep = det.report_["shortcut"]
    assert rep["found"] and rep["n_flagged"] == truth.sum() and rep["n_new"] == 0 and "under 1%" in rep["why_not"]


def test_counter_test_reuses_given_logits_with_the_same_result():
    from flare_core.models.training import predict_logits

    ds, truth = dataset()
    model = BrightnessModel(trigger=True)
    plain = S.shortcut_evidence(model, ds, per_class=40)
    reused = S.shortcut_evidence(model, ds, per_class=40, logits=predict_logits(model, ds.images))
    np.testing.assert_allclose(reused.drop, plain.drop, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(reused.after_class, plain.after_class)
    with pytest.raises(ValueError):
        S.shortcut_evidence(model, ds, per_class=40, logits=np.zeros((3, K)))


@pytest.mark.parametrize("k, want", [(2, 200), (10, 200), (50, 40), (100, 20), (1000, 20)])
def test_probe_size_stays_bounded_for_many_classes(k, want):
    assert S.default_per_class(k) == want
