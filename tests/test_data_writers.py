"""Contracts of flare_core.data writers: round-trips, byte-identical export, atomicity, source never touched."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from flare_core.data import export_subset, load_dataset, save_imagefolder, save_npz
from flare_core.data.writers import EXPORT_MARKER, class_dir_names
from flare_core.dataset import ImageDataset
from flare_core.errors import DataError
from test_data_helpers import make_cifar10, make_imagefolder, tree_hashes, write_idx, write_image


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _toy(n=6, channels=1, classes=("a", "b", "c")) -> ImageDataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 5, 5, channels), dtype=np.uint8)
    y = np.arange(n) % len(classes)
    return ImageDataset(x, y, list(classes), [f"mem#{i}" for i in range(n)], format="npz", root="")


# ---------------------------------------------------------------- save_npz


@pytest.mark.parametrize("channels", [1, 3])
def test_save_npz_round_trip(tmp_path, channels):
    ds = _toy(channels=channels)
    out = save_npz(ds, tmp_path / "d.npz")
    back = load_dataset(out)
    np.testing.assert_array_equal(back.images, ds.images)
    np.testing.assert_array_equal(back.labels, ds.labels)
    assert back.classes == ds.classes and back.sources == ds.sources
    assert _leftovers(tmp_path) == []


def test_save_npz_refuses_to_overwrite_its_source(tmp_path):
    save_npz(_toy(), tmp_path / "d.npz")
    ds = load_dataset(tmp_path / "d.npz")
    before = _sha(tmp_path / "d.npz")
    with pytest.raises(DataError, match="own source"):
        save_npz(ds.subset([0]), tmp_path / "d.npz")
    assert _sha(tmp_path / "d.npz") == before


# ---------------------------------------------------------------- save_imagefolder


@pytest.mark.parametrize("channels", [1, 3])
def test_save_imagefolder_round_trip(tmp_path, channels):
    ds = _toy(channels=channels)
    out = save_imagefolder(ds, tmp_path / "out")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))[:2] == ["a/000000.png", "a/000003.png"]
    back = load_dataset(out)
    assert back.classes == ds.classes and back.image_shape == ds.image_shape
    order = np.argsort([int(Path(s).stem) for s in back.sources])
    np.testing.assert_array_equal(back.images[order], ds.images)  # PNG is lossless
    np.testing.assert_array_equal(back.labels[order], ds.labels)
    assert _leftovers(tmp_path) == []


def test_save_imagefolder_refuses_non_empty_folder_unless_overwrite(tmp_path):
    save_imagefolder(_toy(), tmp_path / "out")
    (tmp_path / "out" / "keep.txt").write_text("left in an earlier export")
    with pytest.raises(DataError, match="not empty"):
        save_imagefolder(_toy(), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").exists()
    save_imagefolder(_toy(), tmp_path / "out", overwrite=True)  # an earlier export is replaced
    assert not (tmp_path / "out" / "keep.txt").exists() and len(load_dataset(tmp_path / "out")) == 6


def test_overwrite_does_not_replace_a_folder_flare_did_not_write(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an earlier export"):
        save_imagefolder(_toy(), tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_the_export_marker_is_skipped_by_the_loader(tmp_path):
    save_imagefolder(_toy(), tmp_path / "out")
    assert (tmp_path / "out" / EXPORT_MARKER).is_file()
    back = load_dataset(tmp_path / "out")
    assert len(back) == 6 and all(EXPORT_MARKER not in str(s) for s in back.sources)


def test_class_dir_names_are_safe():
    assert class_dir_names(["T-shirt/top", ".hidden", "", "ok"]) == ["T-shirt_top", "_hidden", "class_2", "ok"]


def test_class_dir_names_clash_raises():
    with pytest.raises(DataError, match="distinct"):
        class_dir_names(["a/b", "a_b"])


# ---------------------------------------------------------------- export_subset: ImageFolder


def _folder_dataset(tmp_path):
    src = tmp_path / "src"
    make_imagefolder(src, classes=("cat", "dog"), per_class=4)
    return src, load_dataset(src)


def test_export_imagefolder_byte_identical_and_partition(tmp_path):
    src, ds = _folder_dataset(tmp_path)
    before = tree_hashes(src)
    keep = [0, 2, 5, 7]
    drop = [i for i in range(len(ds)) if i not in keep]
    out_keep = export_subset(ds, keep, tmp_path / "kept")
    out_drop = export_subset(ds, drop, tmp_path / "dropped")
    assert out_keep == (tmp_path / "kept").absolute()
    for i in keep:
        src_file = Path(ds.sources[i])
        assert _sha(out_keep / src_file.parent.name / src_file.name) == _sha(src_file)
    exported = [(path, h) for out in (out_keep, out_drop) for path, h in tree_hashes(out).items()
                if path != EXPORT_MARKER]
    assert sorted(exported) == sorted(before.items())  # kept + dropped = all, same relative paths and bytes
    marker = json.loads((out_keep / EXPORT_MARKER).read_text())
    assert marker["samples"] == 4 and marker["of"] == len(ds) and marker["format"] == "imagefolder"
    assert tree_hashes(src) == before
    back = load_dataset(out_keep)
    np.testing.assert_array_equal(back.images, ds.subset(keep).images)
    assert _leftovers(tmp_path) == []


def test_export_accepts_boolean_mask(tmp_path):
    src, ds = _folder_dataset(tmp_path)
    mask = np.zeros(len(ds), bool)
    mask[[1, 6]] = True
    out = export_subset(ds, mask, tmp_path / "out")
    assert len(list(out.rglob("*.png"))) == 2


def test_export_disambiguates_clashing_names(tmp_path):
    src = tmp_path / "src"
    a, b = np.zeros((4, 4), np.uint8), np.full((4, 4), 9, np.uint8)
    write_image(src / "cat" / "x.png", a)
    write_image(src / "cat" / "sub" / "x.png", b)
    ds = load_dataset(src)
    out = export_subset(ds, [0, 1], tmp_path / "out")
    names = sorted(p.name for p in (out / "cat").iterdir())
    assert names == ["x.png", "x_1.png"]
    assert {_sha(out / "cat" / n) for n in names} == {_sha(s) for s in ds.sources}


def test_export_csv_writes_manifest_and_reloads(tmp_path):
    written = make_imagefolder(tmp_path / "img", per_class=3)
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((p.relative_to(tmp_path).as_posix(), p.parent.name) for p in written)
    ds = load_dataset(tmp_path / "list.csv")
    before = tree_hashes(tmp_path)
    out_root = tmp_path.parent / f"{tmp_path.name}-export"
    result = export_subset(ds, [4, 0, 3], out_root)
    assert result == out_root / "manifest.csv"
    back = load_dataset(result)
    assert back.format == "csv" and back.classes == ds.classes
    np.testing.assert_array_equal(back.images, ds.subset([4, 0, 3]).images)
    np.testing.assert_array_equal(back.labels, ds.subset([4, 0, 3]).labels)
    assert load_dataset(out_root).format == "csv"
    assert tree_hashes(tmp_path) == before


# ---------------------------------------------------------------- export_subset: array layouts


def test_export_npz_input_writes_data_npz(tmp_path):
    save_npz(_toy(), tmp_path / "src.npz")
    ds = load_dataset(tmp_path / "src.npz")
    result = export_subset(ds, [1, 4], tmp_path / "out")
    assert result == (tmp_path / "out" / "data.npz").absolute()
    back = load_dataset(tmp_path / "out")
    np.testing.assert_array_equal(back.images, ds.subset([1, 4]).images)
    assert back.sources == ["mem#1", "mem#4"] and back.classes == ds.classes


def test_export_idx_and_cifar_inputs_write_npz(tmp_path):
    write_idx(tmp_path / "idx" / "train-images-idx3-ubyte", np.arange(3 * 16, dtype=np.uint8).reshape(3, 4, 4))
    write_idx(tmp_path / "idx" / "train-labels-idx1-ubyte", np.array([0, 1, 2], np.uint8))
    make_cifar10(tmp_path / "cifar", per_batch=2, train_batches=1)
    for name in ("idx", "cifar"):
        ds = load_dataset(tmp_path / name)
        back = load_dataset(export_subset(ds, [1], tmp_path / f"out-{name}"))
        np.testing.assert_array_equal(back.images, ds.images[[1]])
        assert back.sources == [ds.sources[1]]


def test_export_builtin_writes_npz(tmp_path):
    from flare_core.data import load_digits_dataset

    ds = load_digits_dataset("test")
    back = load_dataset(export_subset(ds, [0, 1, 2], tmp_path / "out"))
    np.testing.assert_array_equal(back.labels, ds.labels[:3])


# ---------------------------------------------------------------- export_subset: refusals and atomicity


def test_export_refuses_output_inside_source(tmp_path):
    src, ds = _folder_dataset(tmp_path)
    with pytest.raises(DataError, match="inside the dataset folder"):
        export_subset(ds, [0], src / "purified")
    assert not (src / "purified").exists()


def test_export_refuses_non_empty_output(tmp_path):
    _, ds = _folder_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        export_subset(ds, [0], tmp_path / "out")


def test_export_refuses_output_containing_source_even_with_overwrite(tmp_path):
    src, ds = _folder_dataset(tmp_path)
    before = tree_hashes(src)
    with pytest.raises(DataError, match="contains the source"):
        export_subset(ds, [0], tmp_path, overwrite=True)
    assert tree_hashes(src) == before


def test_export_overwrite_replaces_old_output(tmp_path):
    _, ds = _folder_dataset(tmp_path)
    export_subset(ds, [0, 1, 2], tmp_path / "out")
    export_subset(ds, [3], tmp_path / "out", overwrite=True)
    assert len(list((tmp_path / "out").rglob("*.png"))) == 1


@pytest.mark.parametrize(
    "indices, match",
    [
        ([0, 99], "0..7"),
        ([-1], "0..7"),
        ([1, 1], "duplicates"),
        ([], "no samples"),
        ([0.5], "integers"),
        (np.ones(3, bool), "one entry per sample"),
    ],
)
def test_export_bad_indices_raise(tmp_path, indices, match):
    _, ds = _folder_dataset(tmp_path)
    with pytest.raises(DataError, match=match):
        export_subset(ds, indices, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_nothing_behind(tmp_path):
    src, ds = _folder_dataset(tmp_path)
    Path(ds.sources[3]).unlink()
    with pytest.raises(DataError, match="no longer exists"):
        export_subset(ds, [0, 3], tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_export_refuses_output_inside_idx_folder_given_as_file(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1], np.uint8))
    ds = load_dataset(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match="inside the dataset folder"):
        export_subset(ds, [0], tmp_path / "out")
