"""Contracts of flare_core.data loaders: every format, ordering, skipped files and one-line errors."""
from __future__ import annotations

import csv
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from flare_core.data import check_num_classes, detect_format, load_dataset, load_test_set
from flare_core.data.builtin import fashion_mnist_available, load_digits_dataset, load_fashion_mnist
from flare_core.data.cifar import load_cifar
from flare_core.data.idx import FASHION_MNIST_CLASSES
from flare_core.errors import DataError
from test_data_helpers import make_cifar10, make_imagefolder, py2_pickle, tree_hashes, write_idx, write_image

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def _write_csv(path: Path, rows, header=("path", "label")) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)


# ---------------------------------------------------------------- ImageFolder


def test_imagefolder_colour_pixels_classes_sources(tmp_path):
    written = make_imagefolder(tmp_path / "d", classes=("dog", "cat"), per_class=2)
    ds = load_dataset(tmp_path / "d")
    assert ds.format == "imagefolder"
    assert ds.classes == ["cat", "dog"]
    assert ds.images.shape == (4, 8, 8, 3) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.skipped == []
    for img, src in zip(ds.images, ds.sources):
        assert Path(src).is_absolute()
        np.testing.assert_array_equal(img, written[Path(src)])


def test_imagefolder_grayscale_has_one_channel(tmp_path):
    written = make_imagefolder(tmp_path, gray=True)
    ds = load_dataset(tmp_path)
    assert ds.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(ds.images[0, ..., 0], written[Path(ds.sources[0])])


def test_imagefolder_mixed_modes_become_rgb(tmp_path):
    gray = np.full((8, 8), 77, np.uint8)
    write_image(tmp_path / "a" / "g.png", gray)
    write_image(tmp_path / "b" / "c.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "b" / "p.gif", gray)  # palette image, other format
    ds = load_dataset(tmp_path)
    assert ds.image_shape == (8, 8, 3)
    assert (ds.images[0] == 77).all()


def test_imagefolder_other_pillow_formats(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    write_image(tmp_path / "a" / "x.bmp", arr, "BMP")
    write_image(tmp_path / "a" / "y.jpg", arr, "JPEG")
    write_image(tmp_path / "b" / "z.tiff", arr, "TIFF")
    ds = load_dataset(tmp_path)
    assert len(ds) == 3
    np.testing.assert_array_equal(ds.images[0], arr)  # BMP is lossless


def test_imagefolder_resizes_to_most_common_size_with_warning(tmp_path, caplog):
    make_imagefolder(tmp_path, per_class=2, size=(8, 8))
    write_image(tmp_path / "cat" / "zbig.png", np.zeros((12, 10, 3), np.uint8))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(tmp_path)
    assert ds.image_shape == (8, 8, 3) and len(ds) == 5
    assert "resized" in caplog.text


def test_imagefolder_corrupt_and_truncated_files_are_skipped_and_listed(tmp_path, caplog):
    make_imagefolder(tmp_path, per_class=2)
    good = (tmp_path / "cat" / "img_0.png").read_bytes()
    (tmp_path / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "dog" / "garbage.jpg").write_bytes(b"not an image at all")
    (tmp_path / "dog" / "notes.txt").write_text("hello")
    (tmp_path / "dog" / ".hidden.png").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(tmp_path)
    assert len(ds) == 4
    skipped = {Path(p).name: reason for p, reason in ds.skipped}
    assert set(skipped) == {"truncated.png", "garbage.jpg", "notes.txt"}
    assert all(reason for reason in skipped.values())
    assert "Skipped 3" in caplog.text
    assert not any("truncated" in s or "garbage" in s for s in ds.sources)


def test_imagefolder_order_is_stable_and_by_relative_path(tmp_path):
    make_imagefolder(tmp_path, classes=("b", "a"), per_class=3)
    write_image(tmp_path / "a" / "sub" / "deep.png", np.zeros((8, 8, 3), np.uint8))
    ds1, ds2 = load_dataset(tmp_path), load_dataset(tmp_path)
    assert ds1.sources == ds2.sources
    np.testing.assert_array_equal(ds1.images, ds2.images)
    rel = [Path(s).relative_to(tmp_path).as_posix() for s in ds1.sources]
    assert rel == sorted(rel)
    assert "a/sub/deep.png" in rel


def test_imagefolder_picks_split_folder(tmp_path):
    make_imagefolder(tmp_path / "train", per_class=3, seed=1)
    make_imagefolder(tmp_path / "test", per_class=1, seed=2)
    assert len(load_dataset(tmp_path)) == 6
    test = load_dataset(tmp_path, split="test")
    assert len(test) == 2 and all("/test/" in s for s in test.sources)


def test_a_test_set_is_the_test_split_where_the_source_holds_both(tmp_path, caplog):
    assert len(load_test_set("builtin:digits")) == len(load_digits_dataset("test"))  # not the training split
    make_imagefolder(tmp_path / "both" / "train", per_class=3, seed=1)
    make_imagefolder(tmp_path / "both" / "test", per_class=1, seed=2)
    assert len(load_test_set(tmp_path / "both")) == 2
    make_imagefolder(tmp_path / "plain", per_class=2, seed=3)  # a folder of test images: all of it, no warning
    with caplog.at_level(logging.WARNING):
        assert len(load_test_set(tmp_path / "plain")) == 4
    assert "split" not in caplog.text


def test_imagefolder_missing_split_raises(tmp_path):
    make_imagefolder(tmp_path / "train")
    make_imagefolder(tmp_path / "test")
    with pytest.raises(DataError, match="'val'"):
        load_dataset(tmp_path, split="val")


def test_imagefolder_empty_class_folder_is_named(tmp_path):
    make_imagefolder(tmp_path)
    (tmp_path / "emu").mkdir()
    (tmp_path / "emu" / "x.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="'emu'"):
        load_dataset(tmp_path, format="imagefolder")


def test_a_zip_made_on_macos_loads_its_class_folders_only(tmp_path):
    make_imagefolder(tmp_path)
    classes = load_dataset(tmp_path).classes
    (tmp_path / "__MACOSX" / classes[0]).mkdir(parents=True)  # what macOS's zip adds beside the data
    (tmp_path / "__MACOSX" / classes[0] / "._img_0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    ds = load_dataset(tmp_path)
    assert ds.classes == classes and not ds.skipped


def test_imagefolder_without_readable_images_raises(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="No readable images"):
        load_dataset(tmp_path)


def test_loading_leaves_source_tree_unchanged(tmp_path):
    make_imagefolder(tmp_path)
    before = tree_hashes(tmp_path)
    load_dataset(tmp_path)
    assert tree_hashes(tmp_path) == before


def test_progress_callback_reaches_total(tmp_path):
    make_imagefolder(tmp_path, per_class=2)
    calls = []
    load_dataset(tmp_path, progress=lambda stage, done, total: calls.append((done, total)))
    assert calls and calls[-1] == (4, 4)


# ---------------------------------------------------------------- CSV


def test_csv_with_class_names(tmp_path):
    written = make_imagefolder(tmp_path / "img", per_class=2)
    rows = [(p.relative_to(tmp_path).as_posix(), "zebra" if p.parent.name == "cat" else "ant") for p in written]
    _write_csv(tmp_path / "list.csv", rows)
    ds = load_dataset(tmp_path / "list.csv")
    assert ds.format == "csv" and ds.classes == ["ant", "zebra"]
    assert [Path(s) for s in ds.sources] == list(written)  # row order kept
    assert ds.labels.tolist() == [1, 1, 0, 0]
    np.testing.assert_array_equal(ds.images[0], next(iter(written.values())))


def test_csv_with_int_labels_and_missing_file(tmp_path):
    written = make_imagefolder(tmp_path, per_class=1)
    rows = [(p.relative_to(tmp_path).as_posix(), i * 2) for i, p in enumerate(written)] + [("nope.png", 0)]
    _write_csv(tmp_path / "m.csv", rows)
    ds = load_dataset(tmp_path / "m.csv")
    assert ds.classes == ["0", "1", "2"] and ds.labels.tolist() == [0, 2]
    assert len(ds.skipped) == 1 and "nope.png" in ds.skipped[0][0] and "not found" in ds.skipped[0][1]


def test_folder_with_one_csv_is_detected(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    _write_csv(tmp_path / "m.csv", [("x.png", 0)])
    assert detect_format(tmp_path) == "csv"


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "empty"),
        ("file,class\na.png,0\n", "'path,label' header"),
        ("path,label\na.png,0,extra\n", "Line 2"),
        ("path,label\n,0\n", "empty path or label"),
        ("path,label\n", "lists no images"),
        ("path,label\na.png,-1\n", "negative"),
    ],
)
def test_csv_malformed_raises(tmp_path, content, match):
    write_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path / "m.csv")


def test_csv_named_class_without_readable_images_raises(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    _write_csv(tmp_path / "m.csv", [("a.png", "ok"), ("gone.png", "lost")])
    with pytest.raises(DataError, match="'lost'"):
        load_dataset(tmp_path / "m.csv")


# ---------------------------------------------------------------- CIFAR


def test_cifar10_python_batches(tmp_path):
    batches = make_cifar10(tmp_path / "cifar-10-batches-py", per_batch=3)
    ds = load_dataset(tmp_path / "cifar-10-batches-py")
    assert ds.format == "cifar" and ds.images.shape == (15, 32, 32, 3)
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    data, labels = batches["data_batch_1"]
    np.testing.assert_array_equal(ds.images[0], data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert ds.labels[:3].tolist() == labels
    assert ds.sources[3].endswith("data_batch_2#0")
    test = load_dataset(tmp_path / "cifar-10-batches-py", split="test")
    assert len(test) == 3 and test.sources[0].endswith("test_batch#0")


def test_cifar100_train_test_meta(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": [1] * n, b"coarse_labels": [0] * n}
        (tmp_path / split).write_bytes(py2_pickle(d))
    names = [f"c{i}".encode() for i in range(100)]
    (tmp_path / "meta").write_bytes(py2_pickle({b"fine_label_names": names, b"coarse_label_names": [b"x"]}))
    ds = load_dataset(tmp_path, split="test")
    assert ds.format == "cifar" and len(ds) == 2 and ds.num_classes == 100 and ds.classes[1] == "c1"


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_cifar_unpickler_refuses_code_and_runs_nothing(tmp_path):
    make_cifar10(tmp_path, per_batch=2)
    marker = tmp_path.parent / f"{tmp_path.name}-pwned"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="refused"):
        load_dataset(tmp_path)
    assert not marker.exists()


def test_cifar_batch_with_wrong_shape_raises(tmp_path):
    make_cifar10(tmp_path, per_batch=2, train_batches=1)
    (tmp_path / "data_batch_1").write_bytes(py2_pickle({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match="malformed"):
        load_cifar(tmp_path)


# ---------------------------------------------------------------- IDX


def _mnist_like(folder: Path, gz: bool, n_train=5, n_test=3) -> tuple:
    rng = np.random.default_rng(0)
    x_tr, y_tr = rng.integers(0, 256, (n_train, 6, 6), dtype=np.uint8), rng.integers(0, 10, n_train).astype(np.uint8)
    x_te, y_te = rng.integers(0, 256, (n_test, 6, 6), dtype=np.uint8), rng.integers(0, 10, n_test).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{ext}", x_tr, gz)
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", y_tr, gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", x_te, gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", y_te, gz)
    return x_tr, y_tr, x_te, y_te


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_splits(tmp_path, gz):
    x_tr, y_tr, x_te, y_te = _mnist_like(tmp_path, gz)
    train = load_dataset(tmp_path)
    test = load_dataset(tmp_path, split="test")
    assert train.format == "idx" and train.image_shape == (6, 6, 1)
    np.testing.assert_array_equal(train.images[..., 0], x_tr)
    np.testing.assert_array_equal(test.labels, y_te)
    assert train.classes == [str(k) for k in range(10)]
    assert test.sources[1] == f"{tmp_path / ('t10k-images-idx3-ubyte' + ('.gz' if gz else ''))}#1"


def test_idx_images_file_path_and_fashion_names(tmp_path):
    folder = tmp_path / "fashion-mnist"
    x_tr, *_ = _mnist_like(folder, gz=True)
    ds = load_dataset(folder / "train-images-idx3-ubyte.gz")
    assert len(ds) == len(x_tr) and ds.classes == FASHION_MNIST_CLASSES


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda f: (f / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2])), "holds 2 labels"),
        (lambda f: (f / "train-images-idx3-ubyte").write_bytes((f / "train-images-idx3-ubyte").read_bytes()[:-5]), "should hold"),
        (lambda f: (f / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04abcd"), "magic"),
        (lambda f: (f / "train-labels-idx1-ubyte").unlink(), "No labels file"),
    ],
)
def test_idx_bad_files_raise(tmp_path, corrupt, match):
    _mnist_like(tmp_path, gz=False)
    corrupt(tmp_path)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path)


def test_idx_truncated_gzip_raises(tmp_path):
    _mnist_like(tmp_path, gz=True)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(DataError, match="truncated"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------- npz


def test_npz_grayscale_with_classes_and_sources(tmp_path):
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 0]), classes=np.array(["no", "yes"]), sources=np.array(["a", "b"]))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.format == "npz" and ds.image_shape == (4, 4, 1)
    assert ds.classes == ["no", "yes"] and ds.sources == ["a", "b"] and ds.labels.tolist() == [1, 0]


def test_npz_default_classes_and_sources(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4, 4, 3), np.uint8), y=np.array([0, 2, 2]))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.classes == ["0", "1", "2"] and ds.sources[2] == f"{tmp_path / 'd.npz'}#2"


def test_npz_channel_first_is_transposed(tmp_path):
    x = np.zeros((2, 3, 5, 4), np.uint8)
    x[:, 0] = 9
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1]))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.image_shape == (5, 4, 3) and (ds.images[..., 0] == 9).all()


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(y=np.array([0])), "no 'x'"),
        (dict(x=np.zeros((1, 4, 4), np.uint8)), "no 'y'"),
        (dict(x=np.zeros((1, 4, 4), np.float32), y=np.array([0])), "uint8"),
        (dict(x=np.zeros((2, 4, 4), np.uint8), y=np.array([0])), "one label per image"),
        (dict(x=np.zeros((1, 4, 4), np.uint8), y=np.array([0.5])), "integers"),
        (dict(x=np.zeros((1, 4, 4), np.uint8), y=np.array([3]), classes=np.array(["a"])), "labels up to 3"),
        (dict(x=np.zeros((1, 4, 4), np.uint8), y=np.array([0]), classes=np.array([object()], dtype=object)), "refused"),
        (dict(x=np.zeros((0, 4, 4), np.uint8), y=np.zeros(0, np.int64)), "no images"),
    ],
)
def test_npz_malformed_raises(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path / "d.npz")


def test_npz_truncated_raises(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError):
        load_dataset(tmp_path / "d.npz")


# ---------------------------------------------------------------- detection and general errors


def test_missing_path_raises(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nothing-here")


def test_unrecognised_file_names_supported_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="--format"):
        load_dataset(tmp_path / "notes.txt")


def test_empty_folder_is_unrecognised(tmp_path):
    with pytest.raises(DataError, match="Could not recognise"):
        load_dataset(tmp_path)


def test_a_folder_of_images_without_class_folders_says_the_labels_are_missing(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="holds image files but no class folders"):
        load_dataset(tmp_path)


def test_images_beside_the_class_folders_are_reported_as_skipped(tmp_path):
    make_imagefolder(tmp_path)
    write_image(tmp_path / "stray.png", np.zeros((8, 8, 3), np.uint8))
    ds = load_dataset(tmp_path)
    assert len(ds) == 6 and ds.classes == ["cat", "dog"]
    assert [(Path(f).name, why) for f, why in ds.skipped] == [("stray.png", "not inside a class folder (root/<class name>/<image>)")]


@pytest.mark.parametrize("content", [b"", b"garbage bytes", b"\x80\x04K\x01."])
def test_a_file_that_is_no_npz_is_called_so(tmp_path, content):
    # It used to say the file held pickled object arrays ("refused for safety"), which sent users hunting for objects.
    (tmp_path / "d.npz").write_bytes(content)
    with pytest.raises(DataError, match=r"is not an \.npz file"):
        load_dataset(tmp_path / "d.npz")


def test_csv_labels_written_as_whole_floats_are_class_numbers(tmp_path):
    # pandas and spreadsheets write 3 as 3.0; read as names they sorted '10.0' before '2.0'
    for i in range(12):
        write_image(tmp_path / f"{i}.png", np.zeros((8, 8), np.uint8))
    _write_csv(tmp_path / "m.csv", [(f"{i}.png", f"{i}.0") for i in range(12)])
    ds = load_dataset(tmp_path / "m.csv")
    assert ds.labels.tolist() == list(range(12)) and ds.classes == [str(k) for k in range(12)]
    _write_csv(tmp_path / "m.csv", [(f"{i}.png", f"{i}.5") for i in range(2)])
    assert load_dataset(tmp_path / "m.csv").classes == ["0.5", "1.5"]  # not whole: names


def test_csv_paths_written_on_windows_are_read(tmp_path):
    write_image(tmp_path / "imgs" / "0.png", np.zeros((8, 8), np.uint8))
    write_image(tmp_path / "imgs" / "1.png", np.zeros((8, 8), np.uint8))
    _write_csv(tmp_path / "m.csv", [("imgs\\0.png", "cat"), ("imgs\\1.png", "dog")])
    ds = load_dataset(tmp_path / "m.csv")
    assert len(ds) == 2 and not ds.skipped and ds.sources[0] == str(tmp_path / "imgs" / "0.png")


def test_a_label_far_past_any_class_count_is_refused_not_built_into_a_class_list(tmp_path):
    # an id column read as the label would have made a list of 10^12 class names
    write_image(tmp_path / "0.png", np.zeros((8, 8), np.uint8))
    _write_csv(tmp_path / "m.csv", [("0.png", "1000000000000")])
    with pytest.raises(DataError, match="has a label of 1,000,000,000,000; labels must be class numbers"):
        load_dataset(tmp_path / "m.csv")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array([0, 10**9]))
    with pytest.raises(DataError, match="has a label of 1,000,000,000"):
        load_dataset(tmp_path / "d.npz")


def test_unknown_format_override_raises(tmp_path):
    make_imagefolder(tmp_path)
    with pytest.raises(DataError, match="Unknown dataset format"):
        load_dataset(tmp_path, format="parquet")


def test_wrong_format_override_raises(tmp_path):
    make_imagefolder(tmp_path)
    with pytest.raises(DataError, match="CIFAR"):
        load_dataset(tmp_path, format="cifar")


def test_labels_beyond_model_outputs_raise(tmp_path):
    make_imagefolder(tmp_path, classes=("a", "b", "c"), per_class=1)
    assert len(load_dataset(tmp_path, num_classes=3)) == 3
    with pytest.raises(DataError, match="2 outputs but the data has labels up to 2"):
        load_dataset(tmp_path, num_classes=2)


def test_check_num_classes_accepts_more_outputs():
    ds = load_digits_dataset("test")
    check_num_classes(ds, 12)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: make_imagefolder(p), "imagefolder"),
        (lambda p: make_cifar10(p, per_batch=1), "cifar"),
        (lambda p: _mnist_like(p, gz=True), "idx"),
        (lambda p: np.savez(p / "only.npz", x=np.zeros((1, 2, 2), np.uint8), y=[0]), "npz"),
    ],
)
def test_detect_format_of_folders(tmp_path, make, expected):
    make(tmp_path)
    assert detect_format(tmp_path) == expected


# ---------------------------------------------------------------- built-in


def test_digits_splits_are_stratified_deterministic_and_disjoint():
    train, test = load_digits_dataset("train"), load_digits_dataset("test")
    assert train.image_shape == (16, 16, 1) and train.images.dtype == np.uint8
    assert len(train) + len(test) == 1797 and abs(len(test) - 0.2 * 1797) < 1
    assert not set(train.sources) & set(test.sources)
    assert train.images.max() == 255 and train.format == "builtin"
    np.testing.assert_array_equal(train.images[:, ::2, ::2], train.images[:, 1::2, 1::2])  # nearest-neighbour 2x
    assert (test.class_counts() >= 35).all()
    assert load_dataset("builtin:digits").sources == train.sources


def test_unknown_builtin_raises():
    with pytest.raises(DataError, match="builtin:digits"):
        load_dataset("builtin:imagenet")


def test_fashion_mnist_missing_root_gives_install_hint(tmp_path):
    assert not fashion_mnist_available(tmp_path)
    with pytest.raises(DataError, match="apt-get install"):
        load_fashion_mnist(root=tmp_path)


@pytest.mark.skipif(not fashion_mnist_available(FASHION_ROOT), reason="Fashion-MNIST package not installed")
def test_fashion_mnist_real_files():
    ds = load_dataset("builtin:fashion-mnist", split="test")
    assert ds.images.shape == (10000, 28, 28, 1)
    assert ds.classes == FASHION_MNIST_CLASSES and (ds.class_counts() == 1000).all()


def test_npy_single_array_is_refused(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "d.npy").rename(tmp_path / "d.npz")
    with pytest.raises(DataError, match="single array"):
        load_dataset(tmp_path / "d.npz")
