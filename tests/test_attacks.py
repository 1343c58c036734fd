"""Contracts of poison_dataset / poison_test_set / GroundTruth for every attack and mode."""
import json

import numpy as np
import pytest

from flare_core.attacks import ATTACKS, GroundTruth, poison_dataset, poison_test_set, poison_test_set_like
from flare_core.dataset import ImageDataset
from flare_core.errors import FlareError

N = 200
K = 4
CASES = [(name, mode) for name, spec in ATTACKS.items() for mode in spec.modes]


def make_dataset(shape=(28, 28, 1), n=N, k=K, seed=0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = np.arange(n) % k  # balanced: 50 per class
    return ImageDataset(images, labels, [f"c{i}" for i in range(k)], [f"data.npz#{i}" for i in range(n)])


@pytest.fixture(params=[(28, 28, 1), (32, 32, 3)], ids=["gray28", "rgb32"])
def dataset(request):
    return make_dataset(request.param)


def changed_rows(a: ImageDataset, b: ImageDataset) -> np.ndarray:
    return np.flatnonzero((a.images != b.images).reshape(len(a), -1).any(axis=1))


@pytest.mark.parametrize("attack,mode", CASES)
def test_trigger_exactly_on_ground_truth_indices(dataset, attack, mode):
    before = dataset.images.copy(), dataset.labels.copy(), list(dataset.sources)
    poisoned, truth = poison_dataset(dataset, attack, rate=0.1, target=1, mode=mode, seed=3)

    # input unchanged
    assert np.array_equal(dataset.images, before[0]) and np.array_equal(dataset.labels, before[1])
    assert dataset.sources == before[2]
    # same size, same order, sources kept
    assert poisoned.images.shape == dataset.images.shape and poisoned.images.dtype == np.uint8
    assert poisoned.sources == dataset.sources and poisoned.classes == dataset.classes
    # exactly round(rate * N) poisoned, sorted, and they are exactly the changed images
    assert truth.n_poisoned == round(0.1 * N)
    assert np.all(np.diff(truth.poisoned_indices) > 0)
    assert np.array_equal(changed_rows(dataset, poisoned), truth.poisoned_indices)
    assert len(truth.cross_indices) == 0
    # labels
    idx = truth.poisoned_indices
    assert np.array_equal(truth.original_labels, dataset.labels[idx])
    assert np.array_equal(truth.new_labels, poisoned.labels[idx])
    rest = np.setdiff1d(np.arange(N), idx)
    assert np.array_equal(poisoned.labels[rest], dataset.labels[rest])
    if ATTACKS[attack].clean_label:
        assert np.all(dataset.labels[idx] == 1) and np.array_equal(poisoned.labels[idx], dataset.labels[idx])
    elif mode == "all-to-one":
        assert np.all(dataset.labels[idx] != 1) and np.all(poisoned.labels[idx] == 1)
    else:
        assert np.array_equal(poisoned.labels[idx], (dataset.labels[idx] + 1) % K)
    # ground-truth record
    assert truth.attack == attack and truth.mode == mode and truth.n_total == N and truth.seed == 3
    assert truth.target == (None if mode == "all-to-all" else 1)
    assert set(truth.params) == set(ATTACKS[attack].defaults)
    assert np.array_equal(truth.mask(), np.isin(np.arange(N), idx))


@pytest.mark.parametrize("attack,mode", CASES)
def test_deterministic_from_seed(attack, mode):
    ds = make_dataset()
    a, ta = poison_dataset(ds, attack, mode=mode, seed=7)
    b, tb = poison_dataset(ds, attack, mode=mode, seed=7)
    c, tc = poison_dataset(ds, attack, mode=mode, seed=8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(ta.poisoned_indices, tb.poisoned_indices)
    assert not np.array_equal(ta.poisoned_indices, tc.poisoned_indices)


@pytest.mark.parametrize("rate", [0.001, 0.05, 0.2])
def test_count_is_rounded_rate_of_whole_dataset(rate):
    ds = make_dataset(n=1000)
    _, truth = poison_dataset(ds, "badnets", rate=rate)
    assert truth.n_poisoned == round(rate * 1000)


@pytest.mark.parametrize("attack,mode", CASES)
def test_test_set_poisoning_excludes_target_class(attack, mode):
    ds = make_dataset()
    before = ds.images.copy()
    out = poison_test_set(ds, attack, target=2, mode=mode, seed=3)
    assert np.array_equal(ds.images, before)
    if mode == "all-to-one":
        keep = np.flatnonzero(ds.labels != 2)
        assert np.all(out.labels == 2)
    else:
        keep = np.arange(N)
        assert np.array_equal(out.labels, (ds.labels + 1) % K)
    assert len(out) == len(keep) and out.sources == [ds.sources[i] for i in keep]
    assert np.all((out.images != ds.images[keep]).reshape(len(out), -1).any(axis=1))


@pytest.mark.parametrize("attack,mode", CASES)
def test_test_set_uses_the_training_trigger(attack, mode):
    ds = make_dataset()
    poisoned, truth = poison_dataset(ds, attack, mode=mode, target=0, seed=5)
    test = poison_test_set_like(ds, truth)
    by_source = {s: i for i, s in enumerate(test.sources)}
    for i in truth.poisoned_indices:
        if ds.sources[i] in by_source:  # clean-label poisons are target-class images, absent from the test set
            assert np.array_equal(test.images[by_source[ds.sources[i]]], poisoned.images[i])


def test_wanet_cross_samples_are_warped_with_labels_kept():
    ds = make_dataset()
    poisoned, truth = poison_dataset(ds, "wanet", rate=0.05, seed=1, params={"cross_ratio": 2})
    assert len(truth.cross_indices) == 2 * truth.n_poisoned
    assert not np.intersect1d(truth.cross_indices, truth.poisoned_indices).size
    changed = changed_rows(ds, poisoned)
    assert np.array_equal(changed, np.union1d(truth.poisoned_indices, truth.cross_indices))
    assert np.array_equal(poisoned.labels[truth.cross_indices], ds.labels[truth.cross_indices])
    assert truth.mask().sum() == truth.n_poisoned


def test_sig_target_class_too_small():
    ds = make_dataset()  # 50 images per class: rate 0.2 of 200 needs 40, fine; shrink the target class
    labels = ds.labels.copy()
    labels[labels == 0] = 1
    labels[:10] = 0
    small = ImageDataset(ds.images, labels, ds.classes, ds.sources)
    with pytest.raises(FlareError, match="target class"):
        poison_dataset(small, "sig", rate=0.1, target=0)


def test_sig_rejects_all_to_all():
    with pytest.raises(FlareError, match="all-to-one"):
        poison_dataset(make_dataset(), "sig", mode="all-to-all")


@pytest.mark.parametrize("rate", [0.5, 0, 0.0005, -0.1, "0.1", True])
def test_bad_rate(rate):
    with pytest.raises(FlareError):
        poison_dataset(make_dataset(), "badnets", rate=rate)


def test_rate_too_small_for_dataset():
    with pytest.raises(FlareError, match="raise the rate"):
        poison_dataset(make_dataset(n=100), "badnets", rate=0.001)


def test_unknown_attack():
    with pytest.raises(FlareError, match="Unknown attack"):
        poison_dataset(make_dataset(), "nope")


@pytest.mark.parametrize("target", [-1, K, 1.5, None])
def test_target_out_of_range(target):
    with pytest.raises(FlareError, match="target class"):
        poison_dataset(make_dataset(), "badnets", target=target)


def test_unknown_mode():
    with pytest.raises(FlareError, match="mode"):
        poison_dataset(make_dataset(), "badnets", mode="one-to-one")


def test_unknown_param():
    with pytest.raises(FlareError, match="Unknown parameter"):
        poison_dataset(make_dataset(), "badnets", params={"alpha": 0.5})


@pytest.mark.parametrize("seed", [-1, 1.5])
def test_bad_seed(seed):
    with pytest.raises(FlareError, match="seed"):
        poison_dataset(make_dataset(), "badnets", seed=seed)


def test_test_set_without_non_target_images():
    ds = make_dataset()
    only_target = ds.subset(np.flatnonzero(ds.labels == 0))
    with pytest.raises(FlareError):
        poison_test_set(only_target, "badnets", target=0)


@pytest.mark.parametrize("attack,mode", [("badnets", "all-to-all"), ("sig", "all-to-one"), ("wanet", "all-to-one")])
def test_ground_truth_json_round_trip(tmp_path, attack, mode):
    params = {"cross_ratio": 1} if attack == "wanet" else ({"position": (2, 3)} if attack == "badnets" else None)
    _, truth = poison_dataset(make_dataset(), attack, mode=mode, seed=2, params=params)
    path = tmp_path / "gt.json"
    truth.to_json(path)
    assert [p.name for p in tmp_path.iterdir()] == ["gt.json"]  # no temp file left behind
    text = path.read_text()
    assert len(text.splitlines()) > 10 and json.loads(text)["attack"] == attack  # readable, valid JSON
    back = GroundTruth.from_json(path)
    (tmp_path / "lab").mkdir()  # a lab folder given for its ground_truth.json (the way --data takes it)
    truth.to_json(tmp_path / "lab" / "ground_truth.json")
    assert np.array_equal(GroundTruth.from_json(tmp_path / "lab").poisoned_indices, truth.poisoned_indices)
    for name in ("poisoned_indices", "original_labels", "new_labels", "cross_indices"):
        assert np.array_equal(getattr(back, name), getattr(truth, name))
    for name in ("attack", "params", "mode", "target", "rate", "seed", "n_total", "clean_label", "classes"):
        assert getattr(back, name) == getattr(truth, name)
    # the reloaded params rebuild the same trigger
    assert np.array_equal(poison_test_set_like(make_dataset(), back).images,
                          poison_test_set_like(make_dataset(), truth).images)


def test_ground_truth_from_bad_files(tmp_path):
    with pytest.raises(FlareError, match="does not exist"):
        GroundTruth.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FlareError, match="not readable JSON"):
        GroundTruth.from_json(bad)
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    with pytest.raises(FlareError, match="not a FLARE ground-truth"):
        GroundTruth.from_json(other)
    with pytest.raises(FlareError, match="not readable JSON"):  # a folder without one
        GroundTruth.from_json(tmp_path)


def test_mask_checks_length():
    _, truth = poison_dataset(make_dataset(), "badnets")
    assert truth.mask().shape == (N,) and truth.mask().sum() == truth.n_poisoned
    with pytest.raises(FlareError):
        truth.mask(int(truth.poisoned_indices[-1]))
