"""Server path rules: browsing and writing stay inside the allowed roots; uploads are stored safely."""
import os
import zipfile
from pathlib import Path

import pytest

from flare_core.errors import FlareError
from flare_core.server_paths import (
    allowed_roots,
    cache_dir,
    dataset_root_of,
    is_allowed,
    list_folder,
    resolve_allowed,
    safe_extract_zip,
    store_upload,
)


def test_roots_from_env_are_resolved_and_deduplicated(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    env = {"FLARE_ROOTS": os.pathsep.join([str(a), str(b), str(a)])}
    assert allowed_roots(env) == [a.resolve(), b.resolve()]


def test_default_roots_are_home_cwd_and_cache(tmp_path):
    env = {"FLARE_CACHE": str(tmp_path / "cache")}
    roots = allowed_roots(env)
    assert Path.home().resolve() in roots and Path.cwd().resolve() in roots
    assert (tmp_path / "cache").resolve() in roots
    assert cache_dir(env) == (tmp_path / "cache").absolute()


def test_resolve_inside_root(tmp_path):
    (tmp_path / "d").mkdir()
    assert resolve_allowed(tmp_path / "d", [tmp_path.resolve()]) == (tmp_path / "d").resolve()
    assert resolve_allowed(tmp_path, [tmp_path.resolve()]) == tmp_path.resolve()


def test_resolve_outside_root_raises(tmp_path):
    with pytest.raises(FlareError, match="outside the folders"):
        resolve_allowed("/etc/passwd", [tmp_path.resolve()])


def test_dotdot_escape_raises(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(FlareError, match="outside"):
        resolve_allowed(root / ".." / "other", [root.resolve()])


def test_symlink_escape_raises(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to("/etc")
    assert not is_allowed(root / "link", [root.resolve()])
    with pytest.raises(FlareError):
        resolve_allowed(root / "link", [root.resolve()])


def test_prefix_sibling_is_not_inside(tmp_path):
    (tmp_path / "data").mkdir(), (tmp_path / "data2").mkdir()
    with pytest.raises(FlareError):
        resolve_allowed(tmp_path / "data2", [(tmp_path / "data").resolve()])


def test_empty_path_raises(tmp_path):
    with pytest.raises(FlareError, match="Enter a path"):
        resolve_allowed("  ", [tmp_path])


def test_must_exist(tmp_path):
    with pytest.raises(FlareError, match="does not exist"):
        resolve_allowed(tmp_path / "nope", [tmp_path.resolve()], must_exist=True)


def test_list_folder_orders_dirs_first_and_hides_dotfiles(tmp_path):
    (tmp_path / "b.txt").write_text("x")
    (tmp_path / "A").mkdir()
    (tmp_path / ".hidden").write_text("x")
    names = [p.name for p in list_folder(tmp_path, [tmp_path.resolve()])]
    assert names == ["A", "b.txt"]


def test_list_folder_on_file_raises(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FlareError, match="not a folder"):
        list_folder(tmp_path / "f", [tmp_path.resolve()])


def test_store_upload_is_content_addressed_and_sanitised(tmp_path):
    p1 = store_upload("../../evil name.pt", b"abc", base=tmp_path)
    p2 = store_upload("../../evil name.pt", b"abc", base=tmp_path)
    assert p1 == p2 and p1.read_bytes() == b"abc"
    assert p1.name == "evil_name.pt" and p1.is_relative_to(tmp_path / "uploads")
    assert store_upload("x.pt", b"abd", base=tmp_path).parent != p1.parent


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_safe_extract_zip_and_root(tmp_path):
    z = _zip(tmp_path / "d.zip", {"ds/cat/1.png": b"1", "ds/dog/2.png": b"2"})
    out = safe_extract_zip(z, tmp_path / "out")
    assert (out / "ds" / "cat" / "1.png").read_bytes() == b"1"
    assert dataset_root_of(out) == out / "ds"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_zip_with_traversal_is_refused(tmp_path):
    z = _zip(tmp_path / "bad.zip", {"../escape.txt": b"x"})
    with pytest.raises(FlareError, match="outside the archive"):
        safe_extract_zip(z, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()


def test_not_a_zip_raises(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(FlareError, match="not a readable zip"):
        safe_extract_zip(tmp_path / "x.zip", tmp_path / "out")


def test_zip_folder_round_trip(tmp_path):
    from flare_core.server_paths import zip_folder

    src = tmp_path / "purified"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.png").write_bytes(b"png")
    (src / "data.npz").write_bytes(b"npz")
    (tmp_path / "z.zip").write_bytes(zip_folder(src))
    out = safe_extract_zip(tmp_path / "z.zip", tmp_path / "out")
    assert (out / "purified" / "a" / "x.png").read_bytes() == b"png"
    assert (out / "purified" / "data.npz").read_bytes() == b"npz"
    with pytest.raises(FlareError):
        zip_folder(tmp_path / "missing")
