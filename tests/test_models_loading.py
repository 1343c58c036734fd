"""Safe loading of model files, checkpoints with a JSON description, and refusal of pickled objects."""
import copy
import hashlib
import io
import json
import pickle
import shutil
import warnings
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from flare_core.errors import ModelError
from flare_core.models import Preprocessing, build_model, load_model, read_sidecar, save_checkpoint, sidecar_path

SIZE = 16


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    m = build_model("small-cnn", 4, 1, SIZE)
    # non-trivial BN statistics so a wrong eval/train mode would show in the outputs
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(8, 1, SIZE, SIZE) * 2)
    return m.eval()


@pytest.fixture
def model(base_model):
    return copy.deepcopy(base_model)


@pytest.fixture
def x():
    return torch.rand(5, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _out(module, x):
    with torch.no_grad():
        return module(x)


def _save_ckpt(model, path, **kw):
    args = dict(arch="small-cnn", num_classes=4, in_channels=1, image_size=SIZE, preprocessing=Preprocessing())
    args.update(kw)
    return save_checkpoint(model, path, **args)


# ------------------------------------------------------------------ state_dict round trips

@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, model, x, suffix):
    path = tmp_path / f"model{suffix}"
    _save_ckpt(model, path, classes=list("abcd"), extra={"trained_on": "unit test"})
    assert sidecar_path(path) == tmp_path / "model.json"
    loaded = load_model(path)  # everything else comes from the sidecar
    assert loaded.kind == "state_dict" and loaded.arch == "small-cnn" and loaded.num_classes == 4
    assert not loaded.module.training
    assert loaded.description["classes"] == list("abcd")
    assert loaded.description["trained_on"] == "unit test"
    torch.testing.assert_close(_out(loaded.module, x), _out(model, x))


def test_sidecar_contents(tmp_path, model):
    path = tmp_path / "m.pt"
    _save_ckpt(model, path, preprocessing=Preprocessing(mean=(0.5,), std=(0.25,)), image_size=(SIZE, SIZE))
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["arch"] == "small-cnn" and side["num_classes"] == 4 and side["in_channels"] == 1
    assert side["image_size"] == [SIZE, SIZE]
    assert side["preprocessing"]["mean"] == [0.5] and side["preprocessing"]["std"] == [0.25]
    assert read_sidecar(path) == side


def test_save_leaves_no_temp_files(tmp_path, model):
    _save_ckpt(model, tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]


def test_state_dict_without_sidecar_needs_arch(tmp_path, model):
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelError, match="--arch"):
        load_model(path)


def test_state_dict_without_sidecar_infers_classes_and_channels(tmp_path, model, x):
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="small-cnn")
    assert loaded.num_classes == 4
    assert loaded.preprocessing.channels == 1 and loaded.preprocessing.mean is None
    assert loaded.preprocessing.size is None
    torch.testing.assert_close(_out(loaded.module, x), _out(model, x))


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict"])
def test_state_dict_inside_a_dict(tmp_path, model, x, key):
    path = tmp_path / "ckpt.pt"
    torch.save({key: model.state_dict(), "epoch": 3}, path)
    loaded = load_model(path, arch="small-cnn")
    torch.testing.assert_close(_out(loaded.module, x), _out(model, x))


def test_dataparallel_prefix_is_stripped(tmp_path, model, x):
    path = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    torch.testing.assert_close(_out(load_model(path, arch="small-cnn").module, x), _out(model, x))


def test_wrong_arch_names_mismatched_keys(tmp_path, model):
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelError, match="do not fit --arch narrow-resnet") as e:
        load_model(path, arch="narrow-resnet")
    assert "missing" in str(e.value) and "\n" not in str(e.value)


def test_wrong_num_classes_names_the_shape(tmp_path, model):
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelError, match="classifier.weight"):
        load_model(path, arch="small-cnn", num_classes=10)


def test_unknown_arch(tmp_path, model):
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelError, match="Unknown architecture"):
        load_model(path, arch="small_cnnn")


def test_explicit_args_override_sidecar(tmp_path, model):
    path = tmp_path / "m.pt"
    _save_ckpt(model, path, preprocessing=Preprocessing(mean=(0.5,), std=(0.25,)))
    loaded = load_model(path, preprocessing={"mean": [0.1], "std": [0.2]})
    assert loaded.preprocessing.mean == (0.1,) and loaded.preprocessing.std == (0.2,)
    assert loaded.preprocessing.size == (SIZE, SIZE)  # kept from the sidecar
    full = Preprocessing(size=(20, 20))
    assert load_model(path, preprocessing=full).preprocessing == full


def test_bad_preprocessing_override(tmp_path, model):
    path = tmp_path / "m.pt"
    _save_ckpt(model, path)
    with pytest.raises(ModelError, match="colour"):
        load_model(path, preprocessing={"colour": 3})


def test_sidecar_arch_overridden_by_argument(tmp_path, model):
    path = tmp_path / "m.pt"
    _save_ckpt(model, path)
    with pytest.raises(ModelError, match="narrow-resnet"):
        load_model(path, arch="narrow-resnet")


def test_invalid_sidecar(tmp_path, model):
    path = tmp_path / "m.pt"
    _save_ckpt(model, path)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ModelError, match="m.json"):
        load_model(path)


def test_sha256_and_device(tmp_path, model):
    path = tmp_path / "m.pt"
    _save_ckpt(model, path)
    loaded = load_model(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.device == "cpu" and next(loaded.module.parameters()).device.type == "cpu"


def test_load_does_not_modify_the_file(tmp_path, model):
    path = tmp_path / "m.pt"
    _save_ckpt(model, path)
    before = path.read_bytes(), (tmp_path / "m.json").read_bytes()
    load_model(path)
    assert (path.read_bytes(), (tmp_path / "m.json").read_bytes()) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable(tmp_path, model):
    path = tmp_path / "m.pt"
    _save_ckpt(model, path)
    with pytest.raises(ModelError, match="CUDA"):
        load_model(path, device="cuda")
    assert load_model(path, device="auto").device == "cpu"


def test_unknown_device(tmp_path, model):
    path = tmp_path / "m.pt"
    _save_ckpt(model, path)
    with pytest.raises(ModelError, match="device"):
        load_model(path, device="tpu")


# ------------------------------------------------------------------ TorchScript and torch.export

def test_torchscript_file(tmp_path, model, x):
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    loaded = load_model(path)
    assert loaded.kind == "torchscript" and loaded.num_classes == 4
    assert loaded.preprocessing.channels == 1
    torch.testing.assert_close(_out(loaded.module, x), _out(model, x))


def test_torchscript_traced_file_with_sidecar(tmp_path, model, x):
    path = tmp_path / "traced.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, x), str(path))
    (tmp_path / "traced.json").write_text(json.dumps({"num_classes": 4, "preprocessing": {"mean": [0.5]}}))
    loaded = load_model(path)
    assert loaded.preprocessing.mean == (0.5,)
    torch.testing.assert_close(_out(loaded.module, x), _out(model, x))


def test_export_file_dynamic_batch(tmp_path, model, x):
    path = tmp_path / "prog.pt2"
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(ep, str(path))
    loaded = load_model(path)
    assert loaded.kind == "export" and loaded.exported_program is not None and loaded.num_classes == 4
    torch.testing.assert_close(_out(loaded.module, x), _out(model, x))
    torch.testing.assert_close(_out(loaded.module, x[:2]), _out(model, x[:2]))


def test_export_file_static_batch_runs_any_batch(exported, model):
    loaded = load_model(exported)  # exported for batch size 5
    x = torch.rand(7, 1, SIZE, SIZE)
    torch.testing.assert_close(_out(loaded.module, x), _out(model, x))  # 7 = 5 + 2 (padded)
    torch.testing.assert_close(_out(loaded.module, x[:1]), _out(model, x[:1]))


def test_export_in_training_mode_is_refused(tmp_path, model, x):
    path = tmp_path / "train.pt2"
    model.train()
    torch.export.save(torch.export.export(model, (x,)), str(path))
    with pytest.raises(ModelError, match="eval"):
        load_model(path)


# ------------------------------------------------------------------ refused and broken files

class _Payload:
    """Unpickling this object creates ``marker`` (stands in for arbitrary code execution)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_really_runs_code_when_unpickled(tmp_path):
    # guards the next test: the payload is live, so its marker staying absent proves no code ran
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "torch.save-legacy", "pickle", "in-state-dict"])
def test_pickled_object_is_refused_and_no_code_runs(tmp_path, how, model):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    payload = _Payload(marker)
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "torch.save-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif how == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save({"state_dict": model.state_dict(), "extra": payload}, path)
    assert not marker.exists()
    with pytest.raises(ModelError, match="arbitrary code") as e:
        load_model(path, arch="small-cnn")
    assert not marker.exists()
    msg = str(e.value)
    assert "refuses" in msg and "torch.jit" in msg and "state_dict" in msg and "\n" not in msg


def _rewrite_zip(src, dst, replace: dict) -> None:
    """Copy a zip archive, replacing members whose name ends with a key of ``replace``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new(data) if callable(new) else new
            zout.writestr(info, data)


def _pickle_bytes(obj, legacy=False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _mark_first_weight_pickled(data: bytes) -> bytes:
    config = json.loads(data)
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    return json.dumps(config).encode()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, base_model):
    path = tmp_path_factory.mktemp("export") / "clean.pt2"
    x = torch.rand(5, 1, SIZE, SIZE)
    torch.export.save(torch.export.export(base_model, (x,)), str(path))
    return path


@pytest.mark.parametrize("attack", ["pickled-weight", "sample-inputs"])
def test_export_archive_with_pickles_is_refused_and_no_code_runs(tmp_path, exported, attack):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt2"
    payload = _pickle_bytes(_Payload(marker))
    if attack == "pickled-weight":  # torch.export.load would torch.load(weights_only=False) this weight
        _rewrite_zip(exported, evil, {"_weights_config.json": _mark_first_weight_pickled, "/weight_0": payload})
    else:  # torch.export.load falls back to weights_only=False when the sample inputs fail to load
        _rewrite_zip(exported, evil, {"sample_inputs/model.pt": payload})
    with pytest.raises(ModelError, match="arbitrary code"):
        load_model(evil)
    assert not marker.exists()


def test_export_payload_is_live_for_torch(tmp_path, exported):
    # guards the test above: torch itself would run the payload
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt2"
    _rewrite_zip(exported, evil, {"sample_inputs/model.pt": _pickle_bytes(_Payload(marker))})
    try:
        torch.export.load(str(evil))
    except Exception:
        pass
    assert marker.exists()


def test_export_archive_with_compiled_code_is_refused(tmp_path, exported):
    evil = tmp_path / "aoti.pt2"
    shutil.copy(exported, evil)
    with zipfile.ZipFile(evil, "a") as z:
        root = z.namelist()[0].split("/")[0]
        z.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(ModelError, match="compiled code"):
        load_model(evil)


def test_clean_export_archive_passes_the_check(exported):
    from flare_core.models.loading import check_export_archive

    check_export_archive(exported)  # must not raise


def test_pickled_module_is_refused(tmp_path, model):
    path = tmp_path / "full_model.pt"
    torch.save(model, path)
    with pytest.raises(ModelError, match="pickled Python object"):
        load_model(path, arch="small-cnn")


@pytest.mark.parametrize("name,content", [
    ("garbage.pt", b"\x00\x01not a model at all" * 10),
    ("garbage.pth", b"PK\x03\x04truncated zip"),
    ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{broken"),
    ("garbage.pt2", b"definitely not an export"),
])
def test_corrupt_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelError, match="could not be read") as e:
        load_model(path, arch="small-cnn")
    assert "\n" not in str(e.value)


def test_truncated_checkpoint(tmp_path, model):
    path = tmp_path / "m.pt"
    _save_ckpt(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        load_model(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_model(tmp_path / "empty.pt")


def test_file_without_tensors(tmp_path):
    path = tmp_path / "nums.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ModelError, match="state_dict"):
        load_model(path, arch="small-cnn")


def test_model_outputs_match_numpy_pipeline(tmp_path, model):
    """A loaded model with its preprocessing classifies uint8 images like the original on [0,1] input."""
    path = tmp_path / "m.pt"
    _save_ckpt(model, path)
    loaded = load_model(path)
    imgs = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 1), dtype=np.uint8)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(_out(loaded.module, loaded.preprocessing(imgs)), _out(model, x))
