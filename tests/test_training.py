"""Training on tiny synthetic data: learns, is deterministic, validates its arguments; augmentation ops."""
import numpy as np
import pytest
import torch

from flare_core.dataset import ImageDataset
from flare_core.errors import DataError, FlareError
from flare_core.models import Preprocessing, build_model, evaluate, train_model
from flare_core.models.loaded import LoadedModel
from flare_core.models.training import augment_batch, lr_at, predict_logits, resolve_augment

FAST = dict(epochs=3, batch_size=16, optimizer="adam", lr=1e-2, num_threads=1)


def separable(n=64, size=12, channels=1, seed=0) -> ImageDataset:
    """Class 0: bright left half; class 1: bright right half; plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    imgs = rng.integers(0, 60, (n, size, size, channels)).astype(np.uint8)
    half = size // 2
    for i, y in enumerate(labels):
        if y == 0:
            imgs[i, :, :half] += 150
        else:
            imgs[i, :, half:] += 150
    return ImageDataset(imgs, labels, ["left", "right"], [f"s#{i}" for i in range(n)])


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_increases_accuracy():
    train, test = separable(64, seed=0), separable(32, seed=1)
    torch.manual_seed(0)
    untrained = build_model("small-cnn", 2, 1, 12).eval()
    before, _ = evaluate(untrained, test, Preprocessing())
    model, history = train_model(train, arch="small-cnn", seed=0, val_dataset=test, **FAST)
    after, pred = evaluate(model, test, Preprocessing())
    assert after >= 0.9 and after > before
    assert pred.shape == (32,) and pred.dtype == np.int64
    assert not model.training
    assert history["epoch"] == [1, 2, 3]
    assert len(history["train_loss"]) == 3 and history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_accuracy"][-1] == pytest.approx(after)
    assert history["config"]["optimizer"] == "adam" and history["config"]["augment"] == {"crop_padding": 2, "flip": False}


def test_same_seed_same_model_other_seed_differs():
    ds = separable(32)
    kw = dict(FAST, epochs=1)
    a, ha = train_model(ds, seed=1, **kw)
    b, hb = train_model(ds, seed=1, **kw)
    c, _ = train_model(ds, seed=2, **kw)
    assert _same_weights(a, b) and ha["train_loss"] == hb["train_loss"]
    assert not _same_weights(a, c)


def test_training_does_not_touch_global_state_or_input():
    ds = separable(32, channels=3)
    images, labels = ds.images.copy(), ds.labels.copy()
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_model(ds, arch="small-cnn-gn", epochs=1, batch_size=16, num_threads=2)
    assert torch.equal(torch.rand(3), expected)  # global RNG untouched
    assert torch.get_num_threads() == threads
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)


def test_read_only_arrays_train_without_a_warning_and_stay_unchanged(recwarn):
    """A memory-mapped or otherwise read-only dataset (what the dashboard's reruns hold) trains as is."""
    ds = separable(32)
    ds.images.setflags(write=False)
    ds.labels.setflags(write=False)
    images, labels = ds.images.copy(), ds.labels.copy()
    train_model(ds, epochs=1, batch_size=16, num_threads=1)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)


def test_resnet_trains_one_step_on_colour_data():
    ds = separable(8, size=8, channels=3)
    model, history = train_model(ds, arch="narrow-resnet", epochs=1, batch_size=4, num_threads=1)
    assert history["config"]["augment"] == {"crop_padding": 2, "flip": True}
    assert model(Preprocessing()(ds.images[:2])).shape == (2, 2)


def test_progress_reaches_total_and_skips_single_sample_batch():
    ds = separable(33)  # 2 batches of 16 and one of 1 (skipped: BatchNorm needs 2 samples)
    calls = []
    train_model(ds, epochs=2, batch_size=16, num_threads=1, progress=lambda s, d, t: calls.append((s, d, t)))
    assert calls[-1] == ("train", 6, 6)
    assert [d for _, d, _ in calls] == list(range(1, 7))


def test_preprocessing_decides_model_channels():
    ds = separable(16)
    model, history = train_model(ds, epochs=1, batch_size=8, num_threads=1, preprocessing=Preprocessing(channels=3))
    assert model.features[0][0].in_channels == 3
    assert history["config"]["preprocessing"]["channels"] == 3


@pytest.mark.parametrize("kwargs,error", [
    (dict(epochs=0), FlareError),
    (dict(batch_size=0), FlareError),
    (dict(lr=-0.1), FlareError),
    (dict(optimizer="rmsprop"), FlareError),
    (dict(schedule="linear"), FlareError),
    (dict(augment="rotate"), FlareError),
    (dict(num_workers=-1), FlareError),
    (dict(arch="no-such-arch"), FlareError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        train_model(separable(8), **{"num_threads": 1, **kwargs})


def test_empty_dataset():
    ds = separable(8).subset([])
    with pytest.raises(DataError):
        train_model(ds, num_threads=1)


def test_labels_out_of_range():
    ds = separable(8)
    bad = ImageDataset(ds.images, np.full(8, 5), ds.classes, ds.sources)
    with pytest.raises(DataError):
        train_model(bad, num_threads=1)


# ------------------------------------------------------------------ evaluation

def test_evaluate_restores_mode_and_accepts_loaded_model():
    ds = separable(10)
    model = build_model("small-cnn", 2, 1, 12).train()
    acc, pred = evaluate(model, ds, Preprocessing(), batch_size=3)
    assert model.training  # restored
    loaded = LoadedModel(module=model, kind="module", num_classes=2)
    acc2, pred2 = evaluate(loaded, ds)
    np.testing.assert_array_equal(pred, pred2)
    assert acc == acc2 == np.mean(pred == ds.labels)


def test_predict_logits_batching_does_not_matter():
    ds = separable(10)
    model = build_model("small-cnn", 2, 1, 12)
    a = predict_logits(model, ds.images, Preprocessing(), batch_size=3)
    b = predict_logits(model, ds.images, Preprocessing(), batch_size=10)
    assert a.shape == (10, 2) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_evaluate_empty_dataset():
    acc, pred = evaluate(build_model("small-cnn", 2, 1, 12), separable(4).subset([]), Preprocessing())
    assert np.isnan(acc) and pred.shape == (0,)


# ------------------------------------------------------------------ augmentation and schedule

def test_resolve_augment():
    assert resolve_augment(None, (28, 28, 1)) == (2, False)
    assert resolve_augment("auto", (32, 32, 3)) == (4, True)
    assert resolve_augment(False, (32, 32, 3)) == (0, False)
    assert resolve_augment("crop", (32, 32, 3)) == (4, False)
    assert resolve_augment("flip", (28, 28, 1)) == (0, True)
    assert resolve_augment("crop+flip", (28, 28, 1)) == (2, True)


def test_augment_identity_without_crop_or_flip():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(augment_batch(x, 0, False, torch.Generator().manual_seed(0)), x)


def test_flip_gives_original_or_mirror_per_sample():
    x = torch.rand(64, 1, 6, 6)
    out = augment_batch(x, 0, True, torch.Generator().manual_seed(0))
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    mirrored = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 0 < sum(mirrored) < 64


def test_crop_is_a_window_of_the_padded_image():
    x = torch.rand(16, 2, 6, 7)
    x_before = x.clone()
    out = augment_batch(x, 2, False, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(x, x_before)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifted = 0
    for o, p in zip(out, padded):
        windows = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(o, p[:, dy:dy + 6, dx:dx + 7])]
        assert windows
        shifted += (2, 2) not in windows
    assert shifted > 0


def test_lr_schedules():
    assert lr_at(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert lr_at(100, 100, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(49, 100, 0.1, "step") == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "step") == pytest.approx(0.01)
    assert lr_at(80, 100, 0.1, "step") == pytest.approx(0.001)
    assert lr_at(80, 100, 0.1, "constant") == 0.1
