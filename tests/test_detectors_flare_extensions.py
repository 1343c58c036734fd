"""FLARE default-mode extensions: clustered sample + neighbour placement, whole-class guard, held-out
Fisher separation in many columns, the opt-in per-channel stage, and the per-channel feature pass."""
import numpy as np
import pytest
import torch
from torch import nn

from flare_core.dataset import ImageDataset
from flare_core.detectors import FlareDetector
from flare_core.detectors.decision import benign_overlap, heldout_separation, label_share, tail_excess
from flare_core.errors import FlareError


def test_planted_cluster_found_when_only_a_sample_is_clustered():
    rng = np.random.default_rng(1)
    n, L = 3000, 4
    X = rng.normal(size=(n, L))
    poison = np.zeros(n, bool)
    poison[rng.choice(n, 150, replace=False)] = True
    X[poison, :2] -= 5.0
    det = FlareDetector(sample_size=1000, random_state=0).fit(X)
    tpr = (det.flagged_ & poison).mean() / poison.mean()
    fpr = (det.flagged_ & ~poison).sum() / (~poison).sum()
    assert tpr >= 0.95 and fpr <= 0.01
    unit = det.evidence_["units"][0]
    assert unit["n_clustered"] == 1000 and unit["placed_by_neighbours"] == 2000
    assert det.embedding_.shape == (n, 2) and np.isfinite(det.embedding_).all()


def test_samples_are_placed_only_for_the_prefixes_kept():
    # nothing to find: every prefix is tried, only the first one (the picture shown) places the samples
    # outside the clustered sample; a poison found at a shorter prefix is placed there, whole
    rng = np.random.default_rng(3)
    n, L = 2400, 4
    clean = FlareDetector(sample_size=800, random_state=0).fit(rng.normal(size=(n, L)))
    assert not clean.flagged_.any() and clean.evidence_["columns_tried"] == [4, 3, 2]
    assert clean.report_["seconds"]["prefixes_tried"] == 3
    assert clean.embedding_.shape == (n, 2) and np.isfinite(clean.embedding_).all()
    assert (clean.clusters_ >= 0).all() and clean.evidence_["units"][0]["placed_by_neighbours"] == n - 800
    X = rng.normal(size=(n, L))
    poison = np.zeros(n, bool)
    poison[rng.choice(n, 120, replace=False)] = True
    X[poison, :2] -= 5.0
    X[poison, 2:] = rng.uniform(-12, 12, size=(poison.sum(), L - 2))  # separated in the shallow columns only
    det = FlareDetector(sample_size=800, min_cluster_size=20, random_state=0).fit(X)
    assert det.subspace_ < L and det.evidence_["units"][0]["placed_by_neighbours"] == n - 800
    assert (det.flagged_ & poison).sum() >= 0.95 * poison.sum() and (det.flagged_ & ~poison).sum() <= 0.01 * n
    assert det.report_["n_flagged"] == int(det.flagged_.sum())


def test_whole_class_is_not_flagged_as_poison_but_poison_inside_a_class_is():
    rng = np.random.default_rng(2)
    sizes = [700, 700, 200]  # class 2 is small and lies apart: a class, not poison
    X = np.vstack([rng.normal(0, 1, (sizes[0], 3)), rng.normal(0, 1, (sizes[1], 3)),
                   rng.normal(0, 1, (sizes[2], 3)) + [8, 8, 8]])
    y = np.repeat([0, 1, 2], sizes)
    det = FlareDetector(random_state=0).fit(X, y)
    assert not det.flagged_.any()
    statuses = [g["status"] for g in det.evidence_["units"][0]["groups"]]
    assert any("a class rather than poison" in s for s in statuses)
    # the same island labelled as class 0 (poison relabelled into a class that keeps its own samples)
    y_poison = y.copy()
    y_poison[y == 2] = 0
    det = FlareDetector(random_state=0).fit(X, y_poison)
    assert det.flagged_[y == 2].mean() >= 0.95 and det.flagged_[y != 2].mean() <= 0.01


def test_label_share():
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert label_share(labels, np.array([1, 1, 0, 0, 0, 0], bool)) == (0, pytest.approx(2 / 3))
    assert label_share(None, np.ones(6, bool)) is None
    assert label_share(labels, np.zeros(6, bool)) is None


def test_heldout_fisher_separates_a_group_the_median_line_misses_in_many_columns():
    rng = np.random.default_rng(3)
    n, d = 4000, 60
    X = rng.normal(size=(n, d)) * np.r_[np.full(10, 0.2), np.full(d - 10, 3.0)]  # signal columns are quiet
    group = np.zeros(n, bool)
    group[:400] = True
    X[group, :10] += 1.0  # 5 sd on the quiet columns, invisible next to the loud ones
    benign = ~group
    assert benign_overlap(X, group, benign) > 0.02  # the median line is swamped
    overlap, excess = heldout_separation(X, group, benign, 0)
    assert overlap <= 0.02 and excess >= 5


def test_heldout_fisher_does_not_separate_halves_of_one_cloud():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(4000, 60))
    group = X[:, 0] > np.quantile(X[:, 0], 0.9)  # the tail of one Gaussian cloud
    overlap, excess = heldout_separation(X, group, ~group, 0)
    assert excess < 5  # a tail of one cloud is not a sub-population
    assert tail_excess(X, group, ~group) < 5


def _channel_data(n=1500, seed=5):
    """Per-layer columns carry nothing; one channel of layer 1 carries a planted group."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    C = np.abs(rng.normal(size=(n, 12))) + 1.0
    poison = np.zeros(n, bool)
    poison[rng.choice(n, 90, replace=False)] = True
    C[poison, 8:12] *= 8.0
    return X, C, np.repeat([0, 1], 6), poison


def test_channel_stage_is_opt_in_and_finds_what_layers_miss():
    X, C, layer, poison = _channel_data()
    off = FlareDetector(random_state=0).fit(X, channels=C, channel_layer=layer)
    assert not off.flagged_.any()
    on = FlareDetector(use_channels="auto", random_state=0).fit(X, channels=C, channel_layer=layer)
    assert (on.flagged_ & poison).sum() >= 0.95 * poison.sum()
    assert (on.flagged_ & ~poison).sum() <= 0.01 * (~poison).sum()
    assert on.report_["representation"] == "channels"
    assert any(str(c).startswith("channels") for c in on.evidence_["columns_tried"])


@pytest.mark.parametrize("kwargs", [
    {"channels": np.ones((10, 3))},  # wrong number of rows
    {"channels": np.ones((1500, 12))},  # no channel_layer
    {"channels": np.ones((1500, 12)), "channel_layer": np.zeros(11, dtype=int)},  # wrong length
    {"channels": np.ones((1500, 12)), "channel_layer": np.full(12, 2)},  # layer out of range
])
def test_bad_channel_inputs_raise(kwargs):
    X, _, _, _ = _channel_data()
    with pytest.raises(FlareError):
        FlareDetector(use_channels="auto").fit(X, **kwargs)


@pytest.mark.parametrize("params", [{"use_channels": "yes"}, {"sample_size": 10}, {"max_label_share": 0.0}])
def test_bad_new_params_raise(params):
    with pytest.raises(FlareError):
        FlareDetector(**params).fit(np.random.default_rng(0).normal(size=(100, 3)))


class _TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_channel_features_match_the_layer_column_and_a_direct_computation():
    from flare_core.features import extract_abnormality_features
    from flare_core.models.loaded import LoadedModel

    torch.manual_seed(0)
    net = _TinyBN()
    for bn in (net.bn, net.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 8, 8, 1), dtype=np.uint8)
    ds = ImageDataset(images=images, labels=rng.integers(0, 2, 40).astype(np.int64), classes=["a", "b"],
                      sources=[f"x#{i}" for i in range(40)])
    lm = LoadedModel(net, "module", 2)
    plain = extract_abnormality_features(lm, ds)
    both = extract_abnormality_features(lm, ds, channels=True)
    assert np.array_equal(np.asarray(plain.values), np.asarray(both.values))
    assert both.channels.shape == (40, 7) and both.channel_layer.tolist() == [0] * 4 + [1] * 3
    # direct: largest |z| per channel of the first BN's input
    x = torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2)
    with torch.no_grad():
        a = net.conv(x)
    z = (a - net.bn.running_mean[None, :, None, None]) / torch.sqrt(net.bn.running_var[None, :, None, None] + net.bn.eps)
    assert np.allclose(both.channels[:, :4], z.abs().flatten(2).amax(2).numpy(), rtol=1e-4, atol=1e-4)
