"""list_layers and the batched extractors on eager models."""
import os

import numpy as np
import pytest
import torch
from torch import nn

from flare_core.dataset import ImageDataset
from flare_core.errors import DataError
from flare_core.features import (
    abnormality,
    extract_abnormality_features,
    extract_activations,
    extract_latent_features,
    extract_pooled_features,
    list_layers,
)
from flare_core.models.loaded import LoadedModel


class ResLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.block(x) + x
        return self.fc(x.mean(dim=(2, 3)))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = torch.relu(self.gn(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean(dim=(2, 3)))


def _bn_model():
    torch.manual_seed(0)
    m = ResLike()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
    return LoadedModel(m.eval(), "module", 3)


def _dataset(n=10, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ImageDataset(images, rng.integers(0, 3, n), ["a", "b", "c"], [f"s{i}" for i in range(n)])


def test_list_layers_bn_in_execution_order():
    layers = list_layers(_bn_model())
    assert [(l.name, l.kind, l.channels, l.stats) for l in layers] == [
        ("bn", "bn", 4, "running"), ("block.1", "bn", 4, "running")]


def test_list_layers_without_bn_uses_blocks():
    torch.manual_seed(0)
    layers = list_layers(LoadedModel(GroupNormNet().eval(), "module", 2))
    assert [(l.name, l.kind, l.channels, l.stats) for l in layers] == [
        ("conv1", "block", 4, "data"), ("gn", "block", 4, "data"), ("conv2", "block", 6, "data")]


def test_running_features_equal_manual_computation():
    model, ds = _bn_model(), _dataset()
    feats = extract_abnormality_features(model, ds, batch_size=4)
    assert feats.values.shape == (10, 2) and feats.values.dtype == np.float32
    assert feats.layer_names == ["bn", "block.1"] and feats.layer_kinds == ["bn", "bn"]
    assert feats.stats_source == "running" and feats.seconds > 0
    m = model.module
    x = model.preprocessing.to_tensor(ds.images)
    acts = extract_activations(model, x, ["bn", "block.1"])
    for j, (name, bn) in enumerate([("bn", m.bn), ("block.1", m.block[1])]):
        expected = abnormality(acts[name], bn.running_mean, bn.running_var, bn.eps)
        np.testing.assert_allclose(feats.values[:, j], expected.numpy(), rtol=1e-5)


def test_features_do_not_depend_on_batch_size():
    model, ds = _bn_model(), _dataset()
    a = extract_abnormality_features(model, ds, batch_size=3).values
    b = extract_abnormality_features(model, ds, batch_size=10).values
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_memmap_output_equals_in_memory(tmp_path):
    model, ds = _bn_model(), _dataset()
    images_before = ds.images.copy()
    mem = extract_abnormality_features(model, ds, batch_size=4)
    out = tmp_path / "feats.npy"
    disk = extract_abnormality_features(model, ds, batch_size=4, out=str(out))
    assert isinstance(disk.values, np.memmap) and disk.path == str(out)
    np.testing.assert_array_equal(np.asarray(disk.values), mem.values)
    np.testing.assert_array_equal(np.load(out), mem.values)
    assert sorted(os.listdir(tmp_path)) == ["feats.npy"]  # no temp file left
    np.testing.assert_array_equal(ds.images, images_before)


def test_progress_stages_running_then_data():
    calls = []
    extract_abnormality_features(_bn_model(), _dataset(), batch_size=4, progress=lambda *a: calls.append(a))
    assert {c[0] for c in calls} == {"features"} and calls[-1] == ("features", 10, 10)
    calls.clear()
    extract_abnormality_features(LoadedModel(GroupNormNet().eval(), "module", 2), _dataset(), batch_size=4,
                                 progress=lambda *a: calls.append(a))
    stages = [c[0] for c in calls]
    assert stages.index("features") > max(i for i, s in enumerate(stages) if s == "feature-stats")
    assert calls[-1] == ("features", 10, 10)


def test_model_without_bn_uses_data_statistics():
    torch.manual_seed(0)
    model, ds = LoadedModel(GroupNormNet().eval(), "module", 2), _dataset(n=12)
    feats = extract_abnormality_features(model, ds, batch_size=5)
    assert feats.stats_source == "data" and feats.layer_kinds == ["block"] * 3
    assert feats.values.shape == (12, 3) and np.isfinite(feats.values).all()
    x = model.preprocessing.to_tensor(ds.images)
    act = extract_activations(model, x, ["conv2"])["conv2"]
    mean = act.mean(dim=(0, 2, 3))
    var = act.var(dim=(0, 2, 3), unbiased=False)
    np.testing.assert_allclose(feats.values[:, 2], abnormality(act, mean, var).numpy(), rtol=1e-4, atol=1e-4)


def test_planted_outlier_image_scores_lowest_on_first_layer():
    model, ds = _bn_model(), _dataset(n=8)
    ds.images[:] = 128
    ds.images[3, 2:6, 2:6] = 255  # a bright patch: the only abnormal sample
    feats = extract_abnormality_features(model, ds)
    assert int(np.argmin(feats.values[:, 0])) == 3


def test_explicit_layers_and_unknown_layer():
    model, ds = _bn_model(), _dataset()
    feats = extract_abnormality_features(model, ds, layers=["block.1"])
    assert feats.layer_names == ["block.1"] and feats.values.shape == (10, 1)
    with pytest.raises(ValueError, match="block.1"):
        extract_abnormality_features(model, ds, layers=["block.2"])


def test_bad_arguments():
    with pytest.raises(ValueError):
        extract_abnormality_features(_bn_model(), _dataset(), batch_size=0)
    empty = ImageDataset(np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0), ["a"], [])
    with pytest.raises(DataError):
        extract_abnormality_features(_bn_model(), empty)


def test_model_mode_and_hooks_untouched():
    model = _bn_model()
    model.module.train()
    extract_abnormality_features(model, _dataset())
    assert all(m.training for m in model.module.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.module.modules())


def test_pooled_features_are_penultimate():
    model, ds = _bn_model(), _dataset()
    pooled, name = extract_pooled_features(model, ds, batch_size=4)
    assert name == "fc:input" and pooled.shape == (10, 4) and pooled.dtype == np.float32
    m = model.module
    x = model.preprocessing.to_tensor(ds.images)
    with torch.no_grad():
        h = torch.relu(m.bn(m.conv(x)))
        expected = (m.block(h) + h).mean(dim=(2, 3))
    np.testing.assert_allclose(pooled, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_pooled_features_of_a_named_layer():
    model, ds = _bn_model(), _dataset()
    pooled, name = extract_pooled_features(model, ds, layer="block")
    assert name == "block" and pooled.shape == (10, 4)
    with pytest.raises(ValueError):
        extract_pooled_features(model, ds, layer="blok")


def test_latent_features_equal_pooled_features_and_a_plain_forward_pass():
    model, ds = _bn_model(), _dataset()
    lat = extract_latent_features(model, ds, batch_size=3)
    pooled, name = extract_pooled_features(model, ds, batch_size=4)
    assert lat.layer == name and lat.pooled.shape == (10, 4) and lat.logits.dtype == np.float32
    np.testing.assert_allclose(lat.pooled, pooled, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        want = model.module(model.preprocessing.to_tensor(ds.images)).numpy()
    np.testing.assert_allclose(lat.logits, want, rtol=1e-5, atol=1e-6)


def test_one_pass_gives_both_inputs_exactly_as_two_passes():
    model, ds = _bn_model(), _dataset()
    model.module.train()
    both = extract_abnormality_features(model, ds, batch_size=3, latent=True)
    assert all(m.training for m in model.module.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.module.modules())
    ref = extract_abnormality_features(model, ds, batch_size=4)
    lat = extract_latent_features(model, ds, batch_size=4)
    np.testing.assert_allclose(both.values, ref.values, rtol=1e-6, atol=1e-6)
    assert both.latent.layer == lat.layer and ref.latent is None
    np.testing.assert_allclose(both.latent.pooled, lat.pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(both.latent.logits, lat.logits, rtol=1e-6, atol=1e-6)
    # a named layer that is also an abnormality layer: still right (it takes a pass of its own)
    same = extract_abnormality_features(model, ds, latent=True, latent_layer="block.1")
    np.testing.assert_allclose(same.latent.pooled, extract_pooled_features(model, ds, layer="block.1")[0],
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        extract_abnormality_features(model, ds, latent=True, latent_layer="blok")


def test_latent_features_leave_mode_and_hooks_untouched():
    model = _bn_model()
    model.module.train()
    extract_latent_features(model, _dataset())
    assert all(m.training for m in model.module.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.module.modules())


# ------------------------------------------------ outputs past the limit on one array in memory (FLARE_IMAGE_RAM_MB)


class WideHead(nn.Module):
    """Little compute, a wide penultimate layer: its pooled features are most of what a pass keeps."""

    def __init__(self, width=256):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.wide = nn.Linear(8, width)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.wide(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))))


def test_outputs_past_the_limit_are_memory_mapped_and_equal_the_in_memory_ones(monkeypatch, own_tmpdir):
    model, ds = _bn_model(), _dataset(n=11)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "1")
    small = extract_abnormality_features(model, ds, batch_size=3, latent=True, channels=True)
    assert not isinstance(small.latent.pooled, np.memmap) and not isinstance(small.channels, np.memmap)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    big = extract_abnormality_features(model, ds, batch_size=4, latent=True, channels=True)
    for got, want in ((big.latent.pooled, small.latent.pooled), (big.latent.logits, small.latent.logits),
                      (big.channels, small.channels)):
        assert isinstance(got, np.memmap) and got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(big.values, small.values, rtol=1e-6, atol=1e-6)
    lat = extract_latent_features(model, ds, batch_size=5)
    pooled, _ = extract_pooled_features(model, ds, batch_size=2)
    assert isinstance(lat.pooled, np.memmap) and isinstance(lat.logits, np.memmap) and isinstance(pooled, np.memmap)
    np.testing.assert_allclose(lat.pooled, small.latent.pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pooled, small.latent.pooled, rtol=1e-6, atol=1e-6)
    assert list(own_tmpdir.iterdir()) == []  # the files have no name: nothing is left behind


def test_outputs_past_the_limit_hold_no_copy_in_memory(monkeypatch, own_tmpdir):
    import tracemalloc

    torch.manual_seed(0)
    model = LoadedModel(WideHead().eval(), "module", 3)
    ds = _dataset(n=2000, size=4)
    pooled_bytes = 2000 * 256 * 4
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    tracemalloc.start()
    try:
        lat = extract_latent_features(model, ds, batch_size=250)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(lat.pooled, np.memmap) and lat.pooled.shape == (2000, 256)
    assert peak < 0.2 * pooled_bytes  # a batch at a time into the file (joining the batches took 1x, in memory)


def test_a_full_temporary_disk_for_the_outputs_is_one_line_and_leaves_the_model_as_it_was(
        monkeypatch, own_tmpdir, tmp_path):
    from flare_core import large_arrays

    model, ds = _bn_model(), _dataset()
    model.module.train()

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(large_arrays.os, "posix_fallocate", full, raising=False)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    with pytest.raises(DataError, match="penultimate features need .* temporary disk space .* TMPDIR") as info:
        extract_abnormality_features(model, ds, batch_size=3, latent=True, out=tmp_path / "f.npy")
    assert "\n" not in str(info.value)
    assert all(m.training for m in model.module.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.module.modules())
    assert list(tmp_path.iterdir()) == [own_tmpdir] and list(own_tmpdir.iterdir()) == []
