"""Large ``.npz`` datasets: read without holding the images twice, and past FLARE_IMAGE_RAM_MB without holding them at
all (memory-mapped read-only from the file when stored uncompressed, else streamed into a temporary file)."""
import hashlib
import tracemalloc
import zipfile

import numpy as np
import pytest

from flare_core.data import export_subset, load_dataset, save_npz
from flare_core.data import npy_member as npy_member_module
from flare_core.data.npy_member import map_member, npy_member, stream_member
from flare_core.errors import DataError


def _images(n=37, h=6, w=5, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _save(path, x, y=None, compressed=False, **extra):
    y = np.arange(len(x)) % 3 if y is None else y
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y, **extra)
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _member(path, name="x.npy"):
    with open(path, "rb") as raw, zipfile.ZipFile(raw) as archive:
        return npy_member(archive, raw, name)


# ---------------------------------------------------------------- the member's header and data


@pytest.mark.parametrize("compressed", [False, True])
def test_the_header_is_read_without_the_data(tmp_path, compressed):
    x = _images()
    path = _save(tmp_path / "d.npz", x, compressed=compressed, classes=np.array(["a", "b", "c"]))
    m = _member(path)
    assert (m.shape, m.dtype, m.fortran_order, m.nbytes) == (x.shape, np.uint8, False, x.nbytes)
    assert (m.data_offset is None) == compressed  # only a stored member lies in the file as it is
    if not compressed:
        np.testing.assert_array_equal(map_member(str(path), m), x)
        raw = path.read_bytes()
        assert raw[m.data_offset:m.data_offset + x.nbytes] == x.tobytes()


def test_every_member_of_an_archive_is_found_at_its_own_offset(tmp_path):
    # several stored members, with numpy's zip64 extra fields: the offsets come from each local header
    a, b = _images(seed=1), _images(n=5, seed=2)
    np.savez(tmp_path / "d.npz", first=a, x=b, y=np.arange(5))
    np.testing.assert_array_equal(map_member(str(tmp_path / "d.npz"), _member(tmp_path / "d.npz", "first.npy")), a)
    np.testing.assert_array_equal(map_member(str(tmp_path / "d.npz"), _member(tmp_path / "d.npz", "x.npy")), b)


@pytest.mark.parametrize("block_bytes", [1, 90, 91, 10**9])
@pytest.mark.parametrize("compressed", [False, True])
def test_a_stream_in_blocks_gives_the_array(tmp_path, compressed, block_bytes):
    # 90 bytes is one row: blocks of one row, of one row with a remainder, and the whole array at once
    x = _images()
    path = _save(tmp_path / "d.npz", x, compressed=compressed)
    with open(path, "rb") as raw, zipfile.ZipFile(raw) as archive:
        m = npy_member(archive, raw, "x.npy")
        out = stream_member(archive, m, np.zeros_like(x), block_bytes=block_bytes)
    np.testing.assert_array_equal(out, x)


def test_object_members_are_refused_from_the_header(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="Python objects"):
        _member(tmp_path / "d.npz")


def test_a_fortran_order_member_cannot_be_streamed(tmp_path):
    x = np.asfortranarray(_images())
    path = _save(tmp_path / "d.npz", x)
    m = _member(path)
    assert m.fortran_order
    np.testing.assert_array_equal(map_member(str(path), m), x)  # mapped in its own order, it is still the array
    with open(path, "rb") as raw, zipfile.ZipFile(raw) as archive, pytest.raises(ValueError, match="Fortran"):
        stream_member(archive, m, np.zeros(x.shape, np.uint8))


# ---------------------------------------------------------------- loading past FLARE_IMAGE_RAM_MB


@pytest.mark.parametrize("gray", [False, True])
def test_stored_images_past_the_limit_are_mapped_read_only_from_the_file(tmp_path, monkeypatch, gray):
    x = _images()[..., :1] if gray else _images()
    path = _save(tmp_path / "d.npz", x[..., 0] if gray else x)
    in_memory = load_dataset(path)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    mapped = load_dataset(path)
    assert not in_memory.images_on_disk and mapped.images_on_disk
    assert mapped.images.filename == str(path) and not mapped.images.flags.writeable
    np.testing.assert_array_equal(mapped.images, in_memory.images)
    assert mapped.sources == in_memory.sources and (mapped.labels == in_memory.labels).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]  # no copy anywhere


@pytest.mark.parametrize("how", ["compressed", "channel-first", "channel-first compressed"])
def test_images_that_cannot_be_mapped_are_streamed_into_a_temporary_file(tmp_path, monkeypatch, how):
    x = _images()
    stored = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if "channel-first" in how else x
    path = _save(tmp_path / "d.npz", stored, compressed="compressed" in how)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    ds = load_dataset(path)
    assert ds.images_on_disk and ds.images.flags.writeable  # our own temporary file, not the source
    np.testing.assert_array_equal(ds.images, x)
    assert list((tmp_path / "scratch").iterdir()) == []  # a file without a name: nothing is left behind


def test_channel_first_images_in_memory_are_transposed_without_a_second_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(npy_member_module, "STREAM_BYTES", 16 * 2**10)  # blocks far smaller than the array
    x = _images(n=400, h=16, w=16)
    path = _save(tmp_path / "d.npz", np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    tracemalloc.start()
    try:
        ds = load_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(ds.images, x)
    assert peak < 1.5 * x.nbytes  # the whole array read, then transposed into another, was 2x


def test_a_mapped_load_holds_almost_nothing_in_memory(tmp_path, monkeypatch):
    x = _images(n=2000, h=16, w=16)
    path = _save(tmp_path / "d.npz", x)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    tracemalloc.start()
    try:
        load_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.2 * x.nbytes  # the sources' strings, the labels; not the pixels


def test_a_fortran_order_array_past_the_limit_is_one_line(tmp_path, monkeypatch):
    path = _save(tmp_path / "d.npz", np.asfortranarray(_images()))
    assert load_dataset(path).images.flags.c_contiguous  # within the limit it is read and made C-order
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    with pytest.raises(DataError, match="Fortran order") as err:
        load_dataset(path)
    assert "np.ascontiguousarray" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("limit", ["0", None])
def test_a_truncated_archive_is_one_line(tmp_path, monkeypatch, compressed, limit):
    path = _save(tmp_path / "d.npz", _images(n=300), compressed=compressed)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    if limit is not None:
        monkeypatch.setenv("FLARE_IMAGE_RAM_MB", limit)
    with pytest.raises(DataError, match="truncated|not an .npz") as err:
        load_dataset(path)
    assert "\n" not in str(err.value)


def test_a_stored_member_cut_short_inside_a_whole_zip_is_one_line(tmp_path, monkeypatch):
    # the zip's directory says more bytes than the file holds after the data start: the map is refused
    path = _save(tmp_path / "d.npz", _images(n=300))
    m = _member(path)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    with open(path, "r+b") as f:
        f.truncate(m.data_offset + 10)
    with pytest.raises(DataError, match="truncated"):
        load_dataset(path)


def test_bad_headers_are_refused_before_any_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    _save(tmp_path / "f.npz", np.zeros((2, 4, 4), np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_dataset(tmp_path / "f.npz")
    _save(tmp_path / "s.npz", np.zeros((2, 4, 4, 5), np.uint8))
    with pytest.raises(DataError, match="expected"):
        load_dataset(tmp_path / "s.npz")


# ---------------------------------------------------------------- subsets and exports of mapped images


def test_a_mapped_dataset_exports_without_touching_its_source(tmp_path, monkeypatch):
    x = _images(n=60)
    path = _save(tmp_path / "d.npz", x, classes=np.array(["a", "b", "c"]))
    before = _sha(path)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    ds = load_dataset(path)
    keep = np.arange(0, 60, 3)
    out = export_subset(ds, keep, tmp_path / "out")
    with zipfile.ZipFile(out) as z:  # past the limit the images are written stored, so they map again
        assert z.getinfo("x.npy").compress_type == zipfile.ZIP_STORED
    again = load_dataset(out)
    assert again.images_on_disk and again.images.filename == str(out)
    np.testing.assert_array_equal(again.images, x[keep])
    assert again.sources == [ds.sources[i] for i in keep] and again.classes == ["a", "b", "c"]
    with pytest.raises(DataError, match="own source file"):
        save_npz(ds, path)
    assert _sha(path) == before


def test_an_export_within_the_limit_is_compressed(tmp_path):
    ds = load_dataset(_save(tmp_path / "d.npz", _images(n=60)))
    out = export_subset(ds, np.arange(10), tmp_path / "out")
    with zipfile.ZipFile(out) as z:
        assert z.getinfo("x.npy").compress_type == zipfile.ZIP_DEFLATED
    np.testing.assert_array_equal(load_dataset(out).images, ds.images[:10])


def test_a_fortran_order_channel_first_array_in_memory_is_transposed_and_made_c_order(tmp_path):
    x = _images()
    ds = load_dataset(_save(tmp_path / "d.npz", np.asfortranarray(x.transpose(0, 3, 1, 2))))
    np.testing.assert_array_equal(ds.images, x)
    assert ds.images.flags.c_contiguous
