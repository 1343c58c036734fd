"""Contracts of flare_core.data.images: image files are decoded once into one array, in memory or, past
FLARE_IMAGE_RAM_MB, in a memory-mapped temporary file that leaves nothing behind."""
from __future__ import annotations

import csv
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from flare_core import large_arrays
from flare_core.data import export_subset, load_dataset
from flare_core.data import images as images_mod
from flare_core.data.images import read_images
from flare_core.errors import DataError
from flare_core.large_arrays import ram_limit
from test_data_helpers import make_imagefolder, tree_hashes, write_image


def test_images_past_the_limit_are_memory_mapped_and_equal_the_in_memory_load(tmp_path, monkeypatch, own_tmpdir):
    make_imagefolder(tmp_path / "d", per_class=5, size=(9, 7))
    write_image(tmp_path / "d" / "dog" / "zz_big.png", np.full((12, 10, 3), 200, np.uint8))  # resized
    (tmp_path / "d" / "cat" / "broken.png").write_bytes(b"not a png")
    in_memory = load_dataset(tmp_path / "d")
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    on_disk = load_dataset(tmp_path / "d")
    assert not in_memory.images_on_disk and on_disk.images_on_disk
    np.testing.assert_array_equal(on_disk.images, in_memory.images)
    assert on_disk.labels.tolist() == in_memory.labels.tolist()
    assert on_disk.sources == in_memory.sources and on_disk.skipped == in_memory.skipped
    assert [Path(p).name for p, _ in on_disk.skipped] == ["broken.png"]
    assert on_disk.images.shape == (11, 9, 7, 3)


def test_a_memory_mapped_load_leaves_no_file_behind(tmp_path, monkeypatch, own_tmpdir):
    make_imagefolder(tmp_path / "d", per_class=4)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    ds = load_dataset(tmp_path / "d")
    assert ds.images_on_disk
    assert list(own_tmpdir.iterdir()) == []  # the file has no name while the array lives
    assert int(ds.images.sum()) > 0
    del ds


def test_a_memory_mapped_dataset_subsets_and_exports_like_any_other(tmp_path, monkeypatch, own_tmpdir):
    make_imagefolder(tmp_path / "d", per_class=4)
    before = tree_hashes(tmp_path / "d")
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    ds = load_dataset(tmp_path / "d")
    sub = ds.subset([0, 5, 2])
    np.testing.assert_array_equal(sub.images, np.asarray(ds.images)[[0, 5, 2]])
    assert sub.images_on_disk  # past the limit (0 MB here) a subset's copy is on disk too
    sub.images[:] = 0
    assert int(ds.images[[0, 5, 2]].sum()) > 0  # a copy: the source rows are untouched
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "1")
    small = ds.subset([1, 3])
    assert not small.images_on_disk
    np.testing.assert_array_equal(small.images, np.asarray(ds.images)[[1, 3]])
    out = export_subset(ds, [0, 1, 7], tmp_path / "out")
    assert len(load_dataset(out)) == 3
    assert tree_hashes(tmp_path / "d") == before


def test_a_csv_manifest_past_the_limit_is_memory_mapped(tmp_path, monkeypatch, own_tmpdir):
    written = make_imagefolder(tmp_path / "imgs", per_class=3)
    rows = [(p.relative_to(tmp_path).as_posix(), p.parent.name) for p in sorted(written)]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    ds = load_dataset(tmp_path / "m.csv")
    assert ds.images_on_disk
    for img, src in zip(ds.images, ds.sources):
        np.testing.assert_array_equal(img, written[Path(src)])


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_load_holds_the_pixels_once(tmp_path, monkeypatch, own_tmpdir):
    """Python-heap peak of a load (numpy reports its buffers to tracemalloc): about one copy of the pixels in
    memory (a list of decoded images and then their stack would be two), and a small part of one on disk."""
    make_imagefolder(tmp_path / "d", classes=("a", "b"), per_class=100, size=(48, 48))
    pixels = 200 * 48 * 48 * 3
    in_memory = _traced_peak(lambda: load_dataset(tmp_path / "d"))
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    on_disk = _traced_peak(lambda: load_dataset(tmp_path / "d"))
    assert pixels <= in_memory < 1.5 * pixels
    assert on_disk < 0.3 * pixels


@pytest.mark.parametrize("threads", [1, 2])
def test_a_colour_image_after_grayscale_ones_turns_the_array_rgb(tmp_path, monkeypatch, threads):
    monkeypatch.setattr(images_mod, "DECODE_CHUNK", 1)
    write_image(tmp_path / "0.png", np.full((6, 6), 50, np.uint8))
    write_image(tmp_path / "1.png", np.full((6, 6), 60, np.uint8))
    write_image(tmp_path / "2.png", np.full((6, 6, 3), 90, np.uint8))
    write_image(tmp_path / "3.png", np.full((4, 4, 3), 120, np.uint8))  # colour and another size
    images, kept, skipped = read_images([tmp_path / f"{i}.png" for i in range(4)], threads=threads)
    assert images.shape == (4, 6, 6, 3) and kept == [0, 1, 2, 3] and skipped == []
    assert [int(images[i].min()) for i in range(4)] == [50, 60, 90, 120]
    assert [int(images[i].max()) for i in range(4)] == [50, 60, 90, 120]


def test_a_first_image_of_a_rare_size_does_not_set_the_size(tmp_path, caplog):
    """The array starts at the first image's size; when most images share another, it is remade at theirs, from
    the pixels already decoded (the same pixels as resizing each file)."""
    rng = np.random.default_rng(3)
    first = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    write_image(tmp_path / "0.png", first)
    rest = [rng.integers(0, 256, (5, 6), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(rest, start=1):
        write_image(tmp_path / f"{i}.png", a)
    with caplog.at_level("WARNING"):
        images, kept, _ = read_images([tmp_path / f"{i}.png" for i in range(4)])
    assert images.shape == (4, 5, 6, 1) and kept == [0, 1, 2, 3]
    np.testing.assert_array_equal(images[0, ..., 0], images_mod.resize(first, (5, 6)))
    for i, a in enumerate(rest, start=1):
        np.testing.assert_array_equal(images[i, ..., 0], a)
    assert "1 of 4 images are not 5x6" in caplog.text


def test_skipped_files_are_listed_in_path_order_whichever_pass_found_them(tmp_path):
    good = tmp_path / "good.png"
    write_image(good, np.zeros((4, 4), np.uint8))
    truncated = tmp_path / "truncated.png"  # a readable header, pixels missing
    big = tmp_path / "big.png"
    write_image(big, np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    truncated.write_bytes(big.read_bytes()[:200])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"nope")
    images, kept, skipped = read_images([truncated, good, garbage])
    assert kept == [1] and images.shape == (1, 4, 4, 1)
    assert [Path(p).name for p, _ in skipped] == ["truncated.png", "garbage.png"]


def test_no_readable_image_gives_none(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    images, kept, skipped = read_images([tmp_path / "x.png"])
    assert images is None and kept == [] and len(skipped) == 1


def test_the_ram_limit_defaults_and_follows_the_environment(monkeypatch):
    monkeypatch.delenv("FLARE_IMAGE_RAM_MB", raising=False)
    assert ram_limit() == large_arrays.RAM_LIMIT_MB * 2**20
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "3")
    assert ram_limit() == 3 * 2**20


@pytest.mark.parametrize("value", ["lots", "-1", "1.5"])
def test_a_bad_ram_limit_is_one_line(monkeypatch, value):
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", value)
    with pytest.raises(DataError, match="FLARE_IMAGE_RAM_MB must be a whole number"):
        ram_limit()


def test_a_full_temporary_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, own_tmpdir):
    make_imagefolder(tmp_path / "d", per_class=2)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")

    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(large_arrays.os, "posix_fallocate", full, raising=False)
    with pytest.raises(DataError, match="temporary disk space .* TMPDIR") as info:
        load_dataset(tmp_path / "d")
    assert "\n" not in str(info.value)
    assert list(own_tmpdir.iterdir()) == []


MOUNTS = """/dev/vda / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid 0 0
/dev/vdb /tmp/big\\040disk xfs rw 0 0
"""


@pytest.mark.parametrize("path, kind", [("/home/a/x", "ext4"), ("/tmp", "tmpfs"), ("/tmp/y", "tmpfs"),
                                        ("/tmp/big disk/y", "xfs"), ("/tmpfoo", "ext4")])
def test_the_file_system_of_a_path_is_its_longest_mount_point(path, kind):
    assert large_arrays.filesystem_type(path, MOUNTS) == kind


def test_a_temporary_folder_in_memory_is_warned_about(tmp_path, monkeypatch, own_tmpdir, caplog):
    make_imagefolder(tmp_path / "d", per_class=2)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    monkeypatch.setattr(large_arrays, "filesystem_type", lambda path, mounts: "tmpfs")
    with caplog.at_level("WARNING"):
        assert load_dataset(tmp_path / "d").images_on_disk
    assert "point TMPDIR at a folder on disk" in caplog.text


def test_the_result_does_not_depend_on_the_decoding_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "DECODE_CHUNK", 2)  # many small tasks, some holding broken files
    make_imagefolder(tmp_path / "d", per_class=6, size=(6, 5))
    (tmp_path / "d" / "cat" / "img_1b.png").write_bytes(b"broken")
    big = tmp_path / "big.png"
    write_image(big, np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8))
    (tmp_path / "d" / "dog" / "img_3b.png").write_bytes(big.read_bytes()[:60])  # header fine, pixels cut
    paths = sorted((tmp_path / "d").rglob("*.png"))
    one = read_images(paths, threads=1)
    three = read_images(paths, threads=3)
    np.testing.assert_array_equal(one[0], three[0])
    assert one[1] == three[1] and one[2] == three[2]
    assert [Path(p).name for p, _ in one[2]] == ["img_1b.png", "img_3b.png"]
    assert len(one[1]) == 12 and len(one[0]) == 12
    expected = np.stack([np.asarray(__import__("PIL.Image").Image.open(paths[i]).convert("RGB")) for i in one[1]])
    np.testing.assert_array_equal(one[0], expected)


@pytest.mark.parametrize("pixels, threads", [(32 * 32, 1), (127 * 129, 1), (128 * 128, min(8, os.cpu_count() or 1)),
                                             (4000 * 3000, min(8, os.cpu_count() or 1))])
def test_small_images_decode_in_one_thread_large_ones_in_several(pixels, threads):
    assert images_mod.decode_threads(pixels) == threads


def _mixed_folder(root: Path, n: int = 40, seed: int = 0) -> list:
    """Files of several sizes, grayscale and colour, the first of a rare size: what a scraped folder holds."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        shape = [(7, 9), (12, 10), (12, 10, 3), (5, 5, 3)][0 if i == 0 else 1 + i % 3]
        p = root / f"{i:03d}.png"
        write_image(p, rng.integers(0, 256, shape, dtype=np.uint8))
        paths.append(p)
    (root / "010.png").write_bytes(b"broken")
    return paths


@pytest.mark.parametrize("aside_bytes", [0, 300])
def test_mixed_sizes_past_the_aside_budget_give_the_same_array(tmp_path, monkeypatch, caplog, aside_bytes):
    """Past the bytes kept aside, the size comes from the files' headers and the rest is resized as decoded: the
    same array as keeping every odd image aside until the end, in any number of threads."""
    paths = _mixed_folder(tmp_path)
    monkeypatch.setattr(images_mod, "DECODE_CHUNK", 2)
    reference = read_images(paths, threads=1)
    monkeypatch.setattr(images_mod, "ASIDE_BYTES", aside_bytes)
    with caplog.at_level("WARNING"):
        for threads in (1, 3):
            got = read_images(paths, threads=threads)
            np.testing.assert_array_equal(got[0], reference[0])
            assert got[1] == reference[1] and got[2] == reference[2]
    assert reference[0].shape == (39, 12, 10, 3)
    assert [Path(p).name for p, _ in reference[2]] == ["010.png"]
    assert "not 12x10 (the most common size)" in caplog.text


def test_a_colour_image_late_in_a_long_grayscale_run_keeps_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "DECODE_CHUNK", 1)  # windows of 4 files in one thread
    paths = []
    for i in range(11):
        a = np.full((5, 5, 3), 10 * i, np.uint8) if i in (6, 9) else np.full((5, 5), 10 * i, np.uint8)
        write_image(tmp_path / f"{i:02d}.png", a)
        paths.append(tmp_path / f"{i:02d}.png")
    images, kept, _ = read_images(paths, threads=1)
    assert images.shape == (11, 5, 5, 3) and kept == list(range(11))
    assert [int(images[i].min()) for i in range(11)] == [10 * i for i in range(11)]
    assert [int(images[i].max()) for i in range(11)] == [10 * i for i in range(11)]


def test_images_put_aside_are_bounded_for_a_folder_of_mixed_sizes(tmp_path, monkeypatch):
    """Every image but the first has another size: they are not all held aside (which would hold the pixels twice)."""
    rng = np.random.default_rng(0)
    write_image(tmp_path / "000.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for i in range(1, 201):
        write_image(tmp_path / f"{i:03d}.png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    paths = sorted(tmp_path.glob("*.png"))
    pixels = 201 * 48 * 48 * 3
    monkeypatch.setattr(images_mod, "DECODE_CHUNK", 8)
    monkeypatch.setattr(images_mod, "ASIDE_BYTES", 64 * 2**10)
    bounded = _traced_peak(lambda: read_images(paths, threads=1))
    monkeypatch.setattr(images_mod, "ASIDE_BYTES", 2**40)
    unbounded = _traced_peak(lambda: read_images(paths, threads=1))
    assert bounded < 1.4 * pixels < unbounded
