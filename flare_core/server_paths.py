"""Which server paths the dashboard may read and write, and where uploads and caches live.

A shared deployment must not expose the whole disk: every path a user types or browses in the
dashboard goes through :func:`resolve_allowed`, which accepts it only inside an allowed root.

Allowed roots come from the environment variable ``FLARE_ROOTS`` (``os.pathsep``-separated, e.g.
``/data:/srv/models``); when it is unset, they are the user's home, the current directory and the
workbench cache (demo data and uploads). The cache folder is ``FLARE_CACHE`` or
``~/.cache/flare-workbench``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from flare_core.atomic import atomic_path, new_temp_dir
from flare_core.errors import FlareError

ROOTS_ENV = "FLARE_ROOTS"
CACHE_ENV = "FLARE_CACHE"  # the same variable flare_core.demo uses
#: Upper bound on what an uploaded zip may expand to (guards against zip bombs).
MAX_EXTRACTED_BYTES = 4 * 1024**3
MAX_ZIP_MEMBERS = 500_000
#: Most files a folder picked in the browser may hold. Browsers send them one request each, and past a thousand
#: or so some never arrive: in headless Chromium on 2 cores (benchmarks/upload_timings.py), 500 arrived in 16 s,
#: 2,000 took 29 s and only 1,419 reached the server; a zip of 10,000 images loaded in 7 s.
MAX_FOLDER_FILES = 500


def cache_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """The workbench's cache folder (demo data, uploads, analysis runs, the last opened run)."""
    env = os.environ if environ is None else environ
    return Path(env.get(CACHE_ENV) or Path.home() / ".cache" / "flare-workbench").expanduser().absolute()


def allowed_roots(environ: Optional[Mapping[str, str]] = None) -> list[Path]:
    """The folders inside which server paths may be used (resolved, without duplicates)."""
    env = os.environ if environ is None else environ
    raw = env.get(ROOTS_ENV, "")
    if raw.strip():
        candidates: Iterable[Path] = (Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip())
    else:
        candidates = (Path.home(), Path.cwd(), cache_dir(env))
    roots: list[Path] = []
    for c in candidates:
        r = c.resolve()
        if r not in roots:
            roots.append(r)
    return roots


def is_allowed(path: str | os.PathLike, roots: Optional[Sequence[Path]] = None) -> bool:
    """True when ``path`` (symlinks resolved) lies inside one of ``roots``."""
    p = Path(path).expanduser().resolve()
    return any(p == r or p.is_relative_to(r) for r in (roots if roots is not None else allowed_roots()))


def resolve_allowed(
    path: str | os.PathLike, roots: Optional[Sequence[Path]] = None, *, must_exist: bool = False
) -> Path:
    """The absolute, symlink-resolved ``path``; raises FlareError when it lies outside the allowed roots."""
    text = str(path).strip()
    if not text:
        raise FlareError("Enter a path on the server.")
    roots = list(roots) if roots is not None else allowed_roots()
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = Path.cwd() / p
    p = p.resolve()
    if not any(p == r or p.is_relative_to(r) for r in roots):
        shown = ", ".join(str(r) for r in roots)
        raise FlareError(
            f"{p} is outside the folders this server may use ({shown}); pick a path inside them "
            f"or ask the administrator to add it to {ROOTS_ENV}."
        )
    if must_exist and not p.exists():
        raise FlareError(f"{p} does not exist; check the path.")
    return p


def check_dataset_files_allowed(dataset, roots: Optional[Sequence[Path]] = None) -> None:
    """FlareError when an image a dataset was read from lies outside the allowed roots.

    A dataset's own path is checked where it is typed, but the files it reads can lie elsewhere: a CSV manifest
    names any path (``/home/other/x.png``, ``../../x.png``), an image folder may hold links. Array formats
    (.npz, IDX, CIFAR batches) read only their own file and are not concerned.
    """
    if getattr(dataset, "format", None) not in ("imagefolder", "csv"):
        return
    roots = list(roots) if roots is not None else allowed_roots()
    folders: dict = {}  # each folder resolved once (60,000 files: 0.4 s, not 4 s); a linked file on its own
    for source in dataset.sources:
        folder, name = os.path.split(os.path.abspath(source))
        if folder not in folders:
            folders[folder] = is_allowed(folder, roots)
        if not (folders[folder] and not os.path.islink(source) or is_allowed(source, roots)):
            raise FlareError(
                f"The dataset reads {source}, which is outside the folders this server may use "
                f"({', '.join(str(r) for r in roots)}); keep the images inside them (a CSV manifest's paths too) "
                f"or ask the administrator to add their folder to {ROOTS_ENV}."
            )


def check_run_inputs_allowed(config: Mapping, roots: Optional[Sequence[Path]] = None) -> None:
    """FlareError when a run's recorded config (``run.json``'s ``config``) names a model, dataset or ground truth
    outside the allowed roots.

    A run folder is a file anyone with write access to an allowed folder (an upload, say) can craft, so the paths
    it names get the same rule as typed ones. The workbench's own demo model (in assets/) is always readable.
    Files that do not exist are left to the loader, which says so.
    """
    from flare_core.demo import ASSETS

    roots = list(roots) if roots is not None else allowed_roots()
    readable = roots + [ASSETS.resolve()]
    for key, what in (("model", "model"), ("data", "dataset"), ("ground_truth", "ground-truth file")):
        value = config.get(key)
        if not value or str(value).startswith("builtin:") or not os.path.exists(value):
            continue
        if not is_allowed(value, readable):
            raise FlareError(f"This run's {what} {Path(value).resolve()} is outside the folders this server may read "
                             f"({', '.join(str(r) for r in roots)}); ask the administrator to add its folder "
                             f"to {ROOTS_ENV}.")


def list_folder(path: str | os.PathLike, roots: Optional[Sequence[Path]] = None, *, limit: int = 500) -> list[Path]:
    """The entries of an allowed folder for browsing: folders first, then files, hidden ones left out."""
    folder = resolve_allowed(path, roots, must_exist=True)
    if not folder.is_dir():
        raise FlareError(f"{folder} is not a folder; pick a folder to browse.")
    try:
        entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    except PermissionError as e:
        raise FlareError(f"{folder} cannot be read (permission denied); pick another folder.") from e
    entries.sort(key=lambda e: (not e.is_dir(), e.name.lower()))
    return entries[:limit]


def _safe_name(name: str) -> str:
    base = Path(name.replace("\\", "/")).name
    keep = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in base).lstrip(".")
    return keep or "upload"


def store_upload(name: str, data: bytes, *, base: Optional[Path] = None, folder: Optional[Path] = None) -> Path:
    """Save uploaded bytes under ``<cache>/uploads/<sha256 prefix>/<name>`` (or ``folder/<name>``) atomically;
    the same bytes reuse one file."""
    if folder is None:
        folder = (base or cache_dir()) / "uploads" / hashlib.sha256(data).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / _safe_name(name)
    if target.is_file() and target.stat().st_size == len(data):
        return target
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


@contextlib.contextmanager
def _unpacking(dest: Path) -> Iterator[Path]:
    """Yield a new temporary folder beside ``dest``, renamed to ``dest`` when the block succeeds and removed
    either way. An empty ``dest`` is replaced; when another session published the same upload first (the folder is
    named by the upload's hash, so the content is the same), theirs is kept and ours dropped: unlike
    :func:`flare_core.atomic.atomic_dir`, never replace a folder another session may be reading."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_dir(dest.parent, f".{dest.name}.", ".partial")
    try:
        yield tmp
        try:
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
        except OSError:
            if not (dest.is_dir() and any(dest.iterdir())):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _member_parts(name: str) -> tuple:
    """The path parts of an archive member or an uploaded folder's file; FlareError when it would land outside."""
    text = name.replace("\\", "/")
    parts = tuple(q for q in text.split("/") if q not in ("", "."))
    if text.startswith("/") or not parts or ".." in parts or ":" in parts[0]:
        raise FlareError(f"The uploaded file {name!r} points outside its folder; the upload is refused.")
    return parts


def store_folder_upload(files: Sequence[tuple[str, bytes]], *, base: Optional[Path] = None) -> Path:
    """Store the files of an uploaded folder (names are paths relative to the folder's parent, as browsers send
    them: ``pets/cat/1.png``) and return the folder to load (:func:`dataset_root_of`).

    The files land in ``<cache>/uploads/<hash of names and contents>/folder``, written to a temp folder renamed
    at the end; the same upload reuses it. Names that climb out, too many files or too many bytes raise FlareError.
    """
    if not files:
        raise FlareError("The uploaded folder holds no files; pick the dataset's folder (root/<class>/<image>).")
    if len(files) > MAX_FOLDER_FILES:
        raise FlareError(f"The folder holds {len(files):,} files, more than the {MAX_FOLDER_FILES} a browser sends "
                         "reliably one by one; upload it as a .zip, or put it on the server and give its path.")
    total = sum(len(d) for _, d in files)
    if total > MAX_EXTRACTED_BYTES:
        raise FlareError(f"The folder holds {total / 1e9:.1f} GB, more than the {MAX_EXTRACTED_BYTES / 1e9:.0f} GB "
                         "allowed; put the dataset on the server and give its path instead.")
    named = sorted((_member_parts(n), d) for n, d in files)
    seen = {parts for parts, _ in named}
    if len(seen) != len(named):
        raise FlareError("The uploaded folder names a file twice; upload the folder again.")
    h = hashlib.sha256()
    for parts, data in named:
        h.update("/".join(parts).encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
    dest = (base or cache_dir()) / "uploads" / h.hexdigest()[:16] / "folder"
    if not (dest.is_dir() and any(dest.iterdir())):
        with _unpacking(dest) as tmp:
            for parts, data in named:
                target = tmp.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    return dataset_root_of(dest)


def store_model_upload(files: Sequence[tuple[str, bytes]], *, base: Optional[Path] = None) -> Path:
    """Store an uploaded model file, with its description (the ``.json`` that ``flare train`` writes beside it)
    when one is uploaded too, and return the model's path. The description is stored beside the model under
    the model's name (``<model>.json``), where the loader looks for it; both land in a folder named by the
    hash of all uploaded bytes, so a model uploaded with another description never picks up this one."""
    models = [(n, d) for n, d in files if not n.lower().endswith(".json")]
    descriptions = [(n, d) for n, d in files if n.lower().endswith(".json")]
    if len(models) != 1 or len(descriptions) > 1:
        got = ", ".join(n for n, _ in files) or "nothing"
        raise FlareError(f"Upload one model file, optionally with its description (.json); got {got}.")
    (name, data), = models
    if descriptions:
        from flare_core.models.loading import check_description

        check_description(descriptions[0][1], descriptions[0][0])
    digest = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for _, d in files)).hexdigest()[:16]
    folder = (base or cache_dir()) / "uploads" / digest
    target = store_upload(name, data, folder=folder)
    if descriptions:
        store_upload(target.with_suffix(".json").name, descriptions[0][1], folder=folder)
    return target


def safe_extract_zip(zip_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a zip into ``dest`` (atomically: a temp folder renamed at the end), refusing unsafe members.

    Absolute paths, ``..`` components, symlinks, too many members or more than
    :data:`MAX_EXTRACTED_BYTES` uncompressed raise FlareError. An existing ``dest`` is reused as is.
    """
    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise FlareError(f"{Path(zip_path).name} is not a readable zip file; upload a .zip archive.") from e
    with zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise FlareError(f"The zip holds {len(members)} files, more than the {MAX_ZIP_MEMBERS} allowed; split it.")
        total = sum(m.file_size for m in members)
        if total > MAX_EXTRACTED_BYTES:
            raise FlareError(
                f"The zip would expand to {total / 1e9:.1f} GB, more than the {MAX_EXTRACTED_BYTES / 1e9:.0f} GB allowed; "
                "put the dataset on the server and give its path instead."
            )
        for m in members:
            is_link = (m.external_attr >> 16) & 0o170000 == 0o120000
            try:
                if is_link:
                    raise FlareError("a symbolic link")
                _member_parts(m.filename)
            except FlareError:
                raise FlareError(f"The zip member {m.filename!r} points outside the archive; the zip is refused.") from None
            # Some Windows tools (PowerShell 5's Compress-Archive, .NET before 4.6.1) write 'cat\\1.png': on
            # Linux that would unpack as one file named so, not a file in a folder. The local header is checked
            # against orig_filename, so renaming here changes only where the member lands.
            m.filename = m.filename.replace("\\", "/")
        with _unpacking(dest) as tmp:
            zf.extractall(tmp, members=members)  # the ZipInfo objects, with the names set above
    return dest


TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_tar_name(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def safe_extract_tar(tar_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a tar archive (plain or compressed) into ``dest`` atomically, with tarfile's ``data`` filter
    (absolute paths, ``..``, links that leave the folder, devices and special files are refused) and the zip's
    limits on members and bytes. An existing non-empty ``dest`` is reused as is."""
    import tarfile

    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    name = Path(tar_path).name
    if not hasattr(tarfile, "data_filter"):  # Python before 3.10.12 / 3.11.4
        raise FlareError(f"{name}: this Python cannot unpack tar archives safely; upload a .zip instead.")
    try:
        tf = tarfile.open(tar_path)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FlareError(f"{name} is not a readable tar archive ({e}); upload a .tar.gz or a .zip.") from e
    with tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise FlareError(f"{name} is cut short or damaged ({e}); upload it again.") from e
        if len(members) > MAX_ZIP_MEMBERS:
            raise FlareError(f"The archive holds {len(members)} files, more than the {MAX_ZIP_MEMBERS} allowed; split it.")
        total = sum(m.size for m in members if m.isfile())
        if total > MAX_EXTRACTED_BYTES:
            raise FlareError(f"The archive would expand to {total / 1e9:.1f} GB, more than the "
                             f"{MAX_EXTRACTED_BYTES / 1e9:.0f} GB allowed; put the dataset on the server and give its "
                             "path instead.")
        with _unpacking(dest) as tmp:
            try:
                tf.extractall(tmp, members=members, filter="data")
            except tarfile.FilterError as e:
                raise FlareError(f"The archive member {e.tarinfo.name!r} is refused ({e}); the archive is refused.") \
                    from None
            except (tarfile.TarError, OSError, EOFError) as e:
                raise FlareError(f"{name} could not be unpacked ({e}); upload it again.") from e
    return dest


def _visible(folder: Path) -> list:
    return [e for e in folder.iterdir() if not e.name.startswith((".", "__MACOSX"))]


def _is_class_folder(folder: Path) -> bool:
    """A folder of images and no sub-folders: one class of an ImageFolder (or unlabelled images)."""
    from flare_core.data.images import image_extensions

    exts = image_extensions()
    entries = _visible(folder)
    return not any(e.is_dir() for e in entries) and any(e.suffix.lower() in exts for e in entries)


def dataset_root_of(extracted: Path) -> Path:
    """The folder to load from an extracted upload.

    Wrapper folders are stepped through (a zip of ``data/`` holds ``data/cat/``, ``data/dog/``; one zipped
    inside another folder holds ``outer/data/...``) until a folder holds more than one entry, or its single
    entry is a file or a class folder (a zip of one class, ``cat/1.png``, loads as one class ``cat``).
    """
    root = extracted
    while True:
        entries = _visible(root)
        if len(entries) != 1 or not entries[0].is_dir() or _is_class_folder(entries[0]):
            return root
        root = entries[0]


def open_dataset_upload(name: str, data: bytes, *, base: Optional[Path] = None) -> Path:
    """Store an uploaded dataset (a .zip, a tar archive or an .npz) and return the path to load: the .npz itself,
    or the folder of the unpacked archive that holds the data. Raises FlareError, in the upload's terms, for an
    empty archive or one that only holds zips."""
    stored = store_upload(name, data, base=base)
    if is_tar_name(stored.name):
        root = dataset_root_of(safe_extract_tar(stored, stored.parent / "extracted"))
    elif stored.suffix.lower() == ".zip":
        root = dataset_root_of(safe_extract_zip(stored, stored.parent / "extracted"))
    else:
        return stored
    entries = _visible(root)
    if not entries:
        raise FlareError(f"The uploaded {name} is empty; zip the dataset's folder (root/<class>/<image>) and upload it.")
    if all(e.is_file() and e.suffix.lower() == ".zip" for e in entries):
        inner = ", ".join(e.name for e in entries[:3])
        raise FlareError(f"The uploaded {name} holds only another zip ({inner}); upload that zip itself, "
                         "or zip the dataset's folder directly.")
    return root


def zip_folder(folder: str | os.PathLike) -> bytes:
    """The files under ``folder`` as an in-memory zip (paths relative to the folder's parent, so it unpacks
    into one folder named like ``folder``)."""
    import io

    folder = Path(folder)
    if not folder.is_dir():
        raise FlareError(f"{folder} is not a folder; nothing to zip.")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                zf.write(p, p.relative_to(folder.parent).as_posix())
    return buf.getvalue()
