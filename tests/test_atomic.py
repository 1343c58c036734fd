"""Atomic writes: the old or the new, never half; nothing temporary left; permissions as a plain write's."""
import contextlib
import json
import os
import stat

import numpy as np
import pytest

from flare_core.atomic import atomic_dir, atomic_path, write_json, write_npy, write_text
from flare_core.errors import FlareError


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "sub" / "run.json"
    write_json(target, {"a": np.int64(1), "b": np.arange(2)})
    write_text(target, '{"a": 2}')
    assert json.loads(target.read_text()) == {"a": 2}
    write_npy(tmp_path / "sub" / "x.npy", np.arange(3))
    assert np.array_equal(np.load(tmp_path / "sub" / "x.npy"), np.arange(3))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["run.json", "x.npy"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_a_folder_is_renamed_into_place_and_an_existing_one_kept_unless_overwritten(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()  # nothing at the destination until it is complete
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(FlareError, match="already exists and is not empty"), atomic_dir(out):
        pass
    with pytest.raises(RuntimeError), atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("stopped")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # the old folder, untouched
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial or old folder left


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_files_and_folders_get_the_permissions_a_plain_write_gives(tmp_path, mask, file_mode, dir_mode):
    # a run folder, a report or a purified dataset is for the team to read: not tempfile's private 0600 / 0700
    with umask(mask):
        write_text(tmp_path / "report.html", "<html></html>")
        with atomic_dir(tmp_path / "run") as tmp:
            write_json(tmp / "run.json", {})
    assert mode(tmp_path / "report.html") == file_mode and mode(tmp_path / "run" / "run.json") == file_mode
    assert mode(tmp_path / "run") == dir_mode


def test_overwrite_with_a_marker_replaces_only_a_folder_that_holds_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("a user's file")
    with pytest.raises(FlareError, match="not an earlier run folder"), atomic_dir(out, overwrite=True,
                                                                                marker="run.json", what="run folder"):
        pass
    assert (out / "mine.txt").read_text() == "a user's file"
    (out / "run.json").write_text("{}")
    with atomic_dir(out, overwrite=True, marker="run.json") as tmp:
        (tmp / "run.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_a_file_at_the_output_path_is_one_clear_error(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(FlareError, match="exists and is not a folder"), atomic_dir(tmp_path / "out", overwrite=True):
        pass
    assert (tmp_path / "out").read_text() == "x"
