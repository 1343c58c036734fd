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


# ---- what users upload as a dataset: the folder FLARE loads from the zip ------------------------------------------
def _png(seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _zip_bytes(members: dict) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _two_classes(prefix: str) -> dict:
    return {f"{prefix}{c}/{i}.png": _png(10 * k + i) for k, c in enumerate(("cat", "dog")) for i in range(2)}


@pytest.mark.parametrize("prefix", ["", "data/", "outer/data/", "a/b/c/"])
def test_an_uploaded_zip_loads_its_class_folders_however_deep_they_are_wrapped(tmp_path, prefix):
    # A zip of `outer/` holding only `data/cat`, `data/dog` used to load as one class, 'data', without a word.
    from flare_core.data import load_dataset
    from flare_core.server_paths import open_dataset_upload

    root = open_dataset_upload("d.zip", _zip_bytes(_two_classes(prefix)), base=tmp_path)
    ds = load_dataset(root)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4


def test_an_uploaded_zip_of_one_class_folder_loads_as_that_class(tmp_path):
    # It used to step into `cat/` and fail: a folder of images is a class, not a wrapper.
    from flare_core.data import load_dataset
    from flare_core.server_paths import open_dataset_upload

    root = open_dataset_upload("cat.zip", _zip_bytes({f"cat/{i}.png": _png(i) for i in range(3)}), base=tmp_path)
    ds = load_dataset(root)
    assert ds.classes == ["cat"] and len(ds) == 3


def test_a_zip_written_with_backslashes_unpacks_into_class_folders(tmp_path):
    # Windows PowerShell 5's Compress-Archive writes 'cat\\0.png'; unpacked as is on Linux, that is one flat file.
    from flare_core.data import load_dataset
    from flare_core.server_paths import open_dataset_upload

    members = {f"{c}\\{i}.png": _png(10 * k + i) for k, c in enumerate(("cat", "dog")) for i in range(2)}
    root = open_dataset_upload("win.zip", _zip_bytes(members), base=tmp_path)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [
        "cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    assert load_dataset(root).classes == ["cat", "dog"]


def test_a_backslash_name_that_climbs_out_is_still_refused(tmp_path):
    z = _zip(tmp_path / "bad.zip", {"cat\\..\\..\\escape.png": b"x"})
    with pytest.raises(FlareError, match="outside the archive"):
        safe_extract_zip(z, tmp_path / "out")
    assert not list(tmp_path.rglob("escape.png"))


def test_an_empty_zip_is_refused_in_the_uploads_terms(tmp_path):
    from flare_core.server_paths import open_dataset_upload

    with pytest.raises(FlareError, match="The uploaded empty.zip is empty"):
        open_dataset_upload("empty.zip", _zip_bytes({}), base=tmp_path)


def test_a_zip_holding_only_a_zip_is_refused_with_the_inner_name(tmp_path):
    from flare_core.server_paths import open_dataset_upload

    with pytest.raises(FlareError, match=r"holds only another zip \(inner.zip\)"):
        open_dataset_upload("outer.zip", _zip_bytes({"inner.zip": _zip_bytes(_two_classes(""))}), base=tmp_path)


def test_an_uploaded_npz_is_returned_as_the_file_to_load(tmp_path):
    from flare_core.server_paths import open_dataset_upload

    assert open_dataset_upload("d.npz", b"npz bytes", base=tmp_path).read_bytes() == b"npz bytes"


# ---- a model uploaded with its description --------------------------------------------------------------------------
def test_a_model_uploaded_with_its_description_lands_beside_it_under_the_models_name(tmp_path):
    from flare_core.models.loading import read_sidecar
    from flare_core.server_paths import store_model_upload

    path = store_model_upload([("weights.pt", b"w"), ("desc.json", b'{"arch": "small-cnn"}')], base=tmp_path)
    assert path.name == "weights.pt" and path.read_bytes() == b"w"
    assert read_sidecar(path) == {"arch": "small-cnn"}
    alone = store_model_upload([("weights.pt", b"w")], base=tmp_path)
    assert alone.parent != path.parent and read_sidecar(alone) == {}  # never picks up another upload's description


@pytest.mark.parametrize("files", [[], [("m.json", b"{}")], [("a.pt", b"1"), ("b.pt", b"2")],
                                   [("a.pt", b"1"), ("x.json", b"{}"), ("y.json", b"{}")]])
def test_a_model_upload_needs_exactly_one_model_file(tmp_path, files):
    from flare_core.server_paths import store_model_upload

    with pytest.raises(FlareError, match="Upload one model file"):
        store_model_upload(files, base=tmp_path)


# ---- a dataset uploaded as a folder (the browser sends each file with its path under the picked folder) ------------
def test_an_uploaded_folder_is_stored_with_its_tree_and_loads(tmp_path):
    from flare_core.data import load_dataset
    from flare_core.server_paths import store_folder_upload

    files = [(f"pets/{c}/{i}.png", _png(10 * k + i)) for k, c in enumerate(("cat", "dog")) for i in range(2)]
    files.append(("pets/.DS_Store", b"finder"))
    root = store_folder_upload(files, base=tmp_path)
    assert root.name == "pets" and (root / "cat" / "1.png").read_bytes() == files[1][1]
    ds = load_dataset(root)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    assert store_folder_upload(list(reversed(files)), base=tmp_path) == root  # the same upload reuses its folder
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.parametrize("bad", ["../escape.png", "pets/../../escape.png", "/etc/escape.png", "C:/escape.png",
                                 "pets\\..\\..\\escape.png"])
def test_an_uploaded_folder_with_a_name_that_climbs_out_is_refused_and_nothing_is_written(tmp_path, bad):
    from flare_core.server_paths import store_folder_upload

    with pytest.raises(FlareError, match="points outside its folder"):
        store_folder_upload([("pets/cat/1.png", b"ok"), (bad, b"x")], base=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and not list(tmp_path.rglob("escape.png"))


def test_an_empty_folder_upload_is_refused(tmp_path):
    from flare_core.server_paths import store_folder_upload

    with pytest.raises(FlareError, match="holds no files"):
        store_folder_upload([], base=tmp_path)


def test_a_folder_upload_larger_than_a_browser_sends_reliably_is_refused(tmp_path, monkeypatch):
    from flare_core import server_paths

    monkeypatch.setattr(server_paths, "MAX_FOLDER_FILES", 3)
    files = [(f"pets/cat/{i}.png", b"x") for i in range(4)]
    with pytest.raises(FlareError, match=r"4 files, more than the 3 .*upload it as a \.zip"):
        server_paths.store_folder_upload(files, base=tmp_path)
    assert not (tmp_path / "uploads").exists()


def test_an_upload_published_first_by_another_session_is_kept(tmp_path):
    # Two sessions unpacking the same upload: the second rename meets a full folder with the same content, which
    # another session may be reading, so it is kept.
    from flare_core.server_paths import _unpacking

    dest = tmp_path / "extracted"
    (dest / "cat").mkdir(parents=True)
    (dest / "cat" / "1.png").write_bytes(b"theirs")
    with _unpacking(dest) as mine:
        (mine / "cat").mkdir()
        (mine / "cat" / "1.png").write_bytes(b"mine")
    assert (dest / "cat" / "1.png").read_bytes() == b"theirs"
    (tmp_path / "empty").mkdir()
    with _unpacking(tmp_path / "empty") as mine:  # an empty folder is replaced
        (mine / "x").write_bytes(b"mine")
    assert (tmp_path / "empty" / "x").read_bytes() == b"mine"
    with pytest.raises(RuntimeError), _unpacking(tmp_path / "failed") as mine:
        raise RuntimeError("unpacking failed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "extracted"]  # no partial folder left


@pytest.mark.parametrize("text, said", [
    (b'{"format": "flare-ground-truth", "version": 1, "classes": ["a"], "poisoned_indices": []}', "a ground-truth file"),
    (b'{"format": "flare-run/1", "config": {}}', "a run's run.json"),
    (b'{"lr": 0.1}', "not a model description"),
    (b"[1, 2]", "not a model description"),
    (b"{oops", "not valid JSON"),
])
def test_a_json_that_is_no_model_description_is_refused_with_what_it_is(tmp_path, text, said):
    from flare_core.server_paths import store_model_upload

    with pytest.raises(FlareError, match=f"m.json is {said}"):
        store_model_upload([("m.pt", b"w"), ("m.json", text)], base=tmp_path)
    assert not (tmp_path / "uploads").exists()  # nothing stored


def test_a_dataset_that_reads_files_outside_the_allowed_folders_is_refused(tmp_path):
    # A CSV manifest may name any path; an image folder may hold a link: the typed path being allowed is not enough.
    import numpy as np
    from PIL import Image

    from flare_core.data import load_dataset
    from flare_core.server_paths import check_dataset_files_allowed

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "imgs").mkdir(parents=True)
    outside.mkdir()
    for folder in (allowed / "imgs", outside):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    (allowed / "ok.csv").write_text("path,label\nimgs/a.png,0\n")
    check_dataset_files_allowed(load_dataset(allowed / "ok.csv"), [allowed])
    (allowed / "escape.csv").write_text("path,label\nimgs/a.png,0\n../outside/a.png,1\n")
    with pytest.raises(FlareError, match=r"reads .*outside/a.png, which is outside the folders"):
        check_dataset_files_allowed(load_dataset(allowed / "escape.csv"), [allowed])
    (allowed / "tree" / "cat").mkdir(parents=True)
    (allowed / "tree" / "cat" / "a.png").symlink_to(outside / "a.png")
    with pytest.raises(FlareError, match="outside the folders"):
        check_dataset_files_allowed(load_dataset(allowed / "tree"), [allowed])
    check_dataset_files_allowed(load_dataset(allowed / "tree"), [allowed, outside])


# ---- tar archives (CIFAR-10 and others are shipped as .tar.gz) --------------------------------------------------------
def _tar_bytes(members: dict, mode: str = "w:gz", links: dict = None) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("name, mode", [("d.tar.gz", "w:gz"), ("d.tgz", "w:gz"), ("d.tar", "w"), ("d.tar.xz", "w:xz")])
def test_an_uploaded_tar_archive_loads_its_class_folders(tmp_path, name, mode):
    from flare_core.data import load_dataset
    from flare_core.server_paths import open_dataset_upload

    root = open_dataset_upload(name, _tar_bytes(_two_classes("cifar10/train/"), mode), base=tmp_path)
    ds = load_dataset(root)
    assert root.name == "train" and ds.classes == ["cat", "dog"] and len(ds) == 4


@pytest.mark.parametrize("members, links", [
    ({"../escape.png": b"x"}, None),
    ({"cat/1.png": b"x"}, {"cat/passwd": "/etc/passwd"}),
    ({"cat/1.png": b"x"}, {"cat/up": "../../../escape"}),
])
def test_a_tar_member_that_leaves_the_folder_is_refused_and_nothing_is_kept(tmp_path, members, links):
    from flare_core.server_paths import open_dataset_upload

    with pytest.raises(FlareError, match="is refused"):
        open_dataset_upload("bad.tar.gz", _tar_bytes(members, links=links), base=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("extracted")) and not list(tmp_path.rglob("escape*"))


def test_an_absolute_tar_member_lands_inside_the_folder(tmp_path):
    # tarfile's data filter strips the leading slash, as GNU tar does
    from flare_core.server_paths import safe_extract_tar

    (tmp_path / "a.tar").write_bytes(_tar_bytes({"/abs/x.png": b"x"}, "w"))
    out = safe_extract_tar(tmp_path / "a.tar", tmp_path / "out")
    assert (out / "abs" / "x.png").read_bytes() == b"x" and not Path("/abs/x.png").exists()


def test_a_damaged_tar_is_one_sentence(tmp_path):
    from flare_core.server_paths import open_dataset_upload

    data = _tar_bytes(_two_classes(""))
    with pytest.raises(FlareError, match="(not a readable tar archive|cut short or damaged|could not be unpacked)"):
        open_dataset_upload("cut.tar.gz", data[: len(data) // 2], base=tmp_path)


def test_a_runs_recorded_inputs_get_the_allowed_folders_rule(tmp_path):
    from flare_core.demo import ASSETS
    from flare_core.server_paths import check_run_inputs_allowed

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir(), outside.mkdir()
    (allowed / "d.npz").write_bytes(b"x")
    (outside / "m.pt").write_bytes(b"x")
    demo_model = next(ASSETS.rglob("model.pt"))
    check_run_inputs_allowed({"model": str(demo_model), "data": str(allowed / "d.npz")}, [allowed])  # shipped demo
    check_run_inputs_allowed({"model": str(outside / "gone.pt"), "data": "builtin:digits"}, [allowed])  # loader's turn
    with pytest.raises(FlareError, match=r"This run's model .*outside/m.pt is outside the folders"):
        check_run_inputs_allowed({"model": str(outside / "m.pt"), "data": str(allowed / "d.npz")}, [allowed])
    with pytest.raises(FlareError, match="This run's ground-truth file"):
        check_run_inputs_allowed({"data": str(allowed / "d.npz"), "ground_truth": str(outside / "m.pt")}, [allowed])
