"""Safe model loading (never unpickles arbitrary objects) and checkpoint saving with a JSON description.

Accepted files:
  * TorchScript archives (``torch.jit.save``)                     -> kind 'torchscript'
  * ``torch.export`` programs (``torch.export.save``, ``.pt2``)     -> kind 'export'
  * state_dicts: ``.pt``/``.pth`` read with ``torch.load(weights_only=True)``, or ``.safetensors``,
    rebuilt with an architecture from the registry                  -> kind 'state_dict'
A pickled ``nn.Module`` (or anything else ``weights_only`` refuses) is refused: loading it could run code.

The description sidecar ``<model path without suffix>.json`` (written by :func:`save_checkpoint`) holds
``arch``, ``num_classes``, ``in_channels``, ``image_size``, ``preprocessing``, ``classes``, ``trained_on``.
Explicit arguments to :func:`load_model` override it.
"""
from __future__ import annotations

import io
import json
import logging
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from flare_core.atomic import atomic_path, write_json
from flare_core.errors import ModelError
from flare_core.hashing import file_sha256
from flare_core.models.architectures import ARCHITECTURES, build_model
from flare_core.models.loaded import LoadedModel
from flare_core.models.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
PREPROCESSING_KEYS = ("size", "channels", "mean", "std")
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")

CONVERT_HINT = (
    "convert it where it was made with torch.jit.save(torch.jit.script(model), 'model.pt') or "
    "torch.export.save(torch.export.export(model.eval(), (example,)), 'model.pt2'), "
    "or save torch.save(model.state_dict(), 'model.pt') and pass --arch NAME"
)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------

def sidecar_path(path: PathLike) -> Path:
    """The description file of a model file: ``model.pt`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: PathLike) -> dict:
    """The model's JSON description, or {} when there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"The model description {side} is not valid JSON ({e}); fix or delete it.") from None
    if not isinstance(data, dict):
        raise ModelError(f"The model description {side} must be a JSON object; fix or delete it.")
    return data


#: what a model description holds (:func:`describe_checkpoint`); one of them is enough to call a JSON one
DESCRIPTION_KEYS = ("arch", "num_classes", "in_channels", "image_size", "preprocessing", "classes")


def check_description(text: bytes | str, name: str = "the description") -> dict:
    """The model description in ``text`` (a JSON object naming at least one of :data:`DESCRIPTION_KEYS`);
    ModelError for anything else, such as a ground-truth file or a run's run.json picked by mistake."""
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{name} is not valid JSON ({e}); give the .json that was saved beside the model.") from None
    kind = data.get("format") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not any(k in data for k in DESCRIPTION_KEYS) or kind:
        what = {"flare-ground-truth": "a ground-truth file"}.get(str(kind), "a run's run.json" if str(kind).startswith(
            "flare-run") else "not a model description")
        raise ModelError(f"{name} is {what}: a model's description names its "
                         f"{', '.join(DESCRIPTION_KEYS[:3])}, ...; give the .json that was saved beside the model.")
    return data


def resolve_device(device: Optional[str]) -> str:
    """'cpu' (default), 'cuda'/'cuda:N' (must be available) or 'auto' (cuda when available)."""
    if device is None or device == "":
        return "cpu"
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError("CUDA was asked for but no CUDA GPU is available; use --device cpu or auto.")
        return device
    if device in ("cpu", "mps"):
        return device
    raise ModelError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or auto.")


def detect_format(path: Path) -> str:
    """'torchscript', 'export', 'safetensors', 'torch-zip' or 'torch-legacy' from the file's content."""
    if path.suffix.lower() == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch-legacy"
        parts = [n.split("/") for n in names]
        if any(len(p) > 1 and p[1] in ("archive_format", "models") for p in parts) or any(
                n.endswith("archive_format") for n in names):
            return "export"
        if any(len(p) > 1 and p[1] in ("code", "constants.pkl") for p in parts):
            return "torchscript"
        return "torch-zip"
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 8:
        n = int.from_bytes(head[:8], "little")
        if 0 < n < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    return "torch-legacy"


def _refuse_pickle(path: Path) -> ModelError:
    return ModelError(
        f"{path.name} contains a pickled Python object (such as a whole nn.Module), and loading it could "
        f"execute arbitrary code, so FLARE refuses it; {CONVERT_HINT}."
    )


def _is_pickled_object(path: Path, err: BaseException) -> bool:
    """Whether torch's weights-only unpickler refused a real pickle (rather than failing on garbage).

    A refused class or function ('Unsupported global') is a pickled object; so is any plain pickle
    stream (starting with the PROTO opcode) that is not a torch file.
    """
    msg = str(err)
    if "Unsupported global" in msg:
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _unreadable(path: Path, what: str, err: BaseException) -> ModelError:
    text = " ".join(str(err).split())
    reason = (text.split(". ")[0].rstrip(".")[:160] if text else type(err).__name__)
    return ModelError(f"{path.name} could not be read as {what} ({reason}); check that the file is complete "
                      f"and is a TorchScript, torch.export (.pt2), state_dict (.pt/.pth) or .safetensors file.")


# --------------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------------

def read_state_dict(path: PathLike) -> "OrderedDict[str, torch.Tensor]":
    """Tensors of a ``.pt``/``.pth`` (weights_only) or ``.safetensors`` file, on the CPU."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as e:
            raise _unreadable(path, "a safetensors file", e) from None
    elif fmt in ("torch-zip", "torch-legacy"):
        what = "a torch.export program" if path.suffix.lower() == ".pt2" else "a PyTorch file"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # e.g. "Detected pickle protocol 4"
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if _is_pickled_object(path, e):
                raise _refuse_pickle(path) from None
            raise _unreadable(path, what, ValueError("unrecognised content")) from None
        except Exception as e:
            raise _unreadable(path, what, e) from None
    else:
        raise ModelError(f"{path.name} is a {fmt} file, not a state_dict.")
    return _extract_state_dict(obj, path)


def _extract_state_dict(obj: Any, path: Path) -> "OrderedDict[str, torch.Tensor]":
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(f"{path.name} holds no state_dict (a mapping of parameter names to tensors); "
                         f"save one with torch.save(model.state_dict(), path).")
    tensors = OrderedDict((str(k), v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise ModelError(f"{path.name} holds no tensors; save the model with torch.save(model.state_dict(), path).")
    return _strip_prefix(tensors)


def _strip_prefix(sd: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    """Remove a 'module.' (DataParallel) or '_orig_mod.' (torch.compile) prefix shared by every key."""
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items())
    return sd


def infer_num_classes(sd: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Output count from the last 2-D weight (the final linear layer), or None."""
    weights = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None


def infer_in_channels(sd: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Input channel count from the first 4-D (conv) weight, or None."""
    for k, v in sd.items():
        if k.endswith("weight") and v.ndim == 4:
            return int(v.shape[1])
    return None


def _load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], arch: str, path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise ModelError(f"The weights in {path.name} do not fit --arch {arch} ({'; '.join(parts)}); "
                         f"pass the architecture the model was trained with.")
    bad = [k for k, v in expected.items() if tuple(v.shape) != tuple(sd[k].shape)]
    if bad:
        k = bad[0]
        raise ModelError(f"The weights in {path.name} do not fit --arch {arch} ({k} has shape "
                         f"{tuple(sd[k].shape)}, the architecture expects {tuple(expected[k].shape)}); "
                         f"pass the architecture and number of classes the model was trained with.")
    model.load_state_dict(sd, strict=True)


# --------------------------------------------------------------------------------------------------
# TorchScript and torch.export
# --------------------------------------------------------------------------------------------------

def _load_torchscript(path: Path, device: str) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location=device)
    except Exception as e:
        raise _unreadable(path, "a TorchScript archive", e) from None


def _export_batchnorm_in_training(ep) -> bool:
    """True when the exported graph runs BatchNorm with batch statistics (exported in training mode)."""
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        # batch_norm, _native_batch_norm_legit(_functional), native_batch_norm, cudnn_batch_norm: arg 5 is
        # ``training``; the *_no_training variants are what an eval-mode export produces.
        if "batch_norm" in name and "no_training" not in name and len(node.args) > 5 and node.args[5] is True:
            return True
    return False


def _static_batch_size(ep) -> Optional[int]:
    """The batch size an exported program was specialised to, or None when the batch dim is dynamic."""
    user_inputs = list(ep.graph_signature.user_inputs)
    if not user_inputs:
        return None
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            val = node.meta.get("val")
            shape = getattr(val, "shape", None)
            if shape is not None and len(shape) > 0 and isinstance(shape[0], int):
                return int(shape[0])
    return None


class FixedBatchAdapter(nn.Module):
    """Runs a module compiled for one batch size on any batch: zero-pads the last chunk, trims the output."""

    def __init__(self, module: nn.Module, batch_size: int) -> None:
        super().__init__()
        self.inner = module
        self.batch_size = int(batch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b = x.shape[0], self.batch_size
        outs = []
        for start in range(0, n, b):
            chunk = x[start:start + b]
            k = chunk.shape[0]
            if k < b:
                chunk = torch.cat([chunk, chunk.new_zeros((b - k,) + tuple(chunk.shape[1:]))])
            outs.append(self.inner(chunk)[:k])
        return torch.cat(outs)


def check_export_archive(path: PathLike) -> None:
    """Refuse a torch.export archive that ``torch.export.load`` could not load without running code.

    ``torch.export.load`` unpickles weights/constants marked ``use_pickle``, opaque objects, and ``.pt``
    payloads it cannot read with ``weights_only`` (falling back to full pickle), and it loads compiled
    AOTInductor libraries. A plain ``torch.export.save`` of a classifier has none of these, so any of them
    is refused before torch sees the file.
    """
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename.replace("\\", "/")
            rel = name.split("/", 1)[1] if "/" in name else name
            if rel.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")) or \
                    name.endswith((".so", ".dll", ".dylib", ".pyd")):
                raise ModelError(
                    f"{path.name} contains compiled code (an AOTInductor or other native package), and loading it "
                    f"could execute arbitrary code, so FLARE refuses it; save the program with "
                    f"torch.export.save(torch.export.export(model.eval(), (example,)), 'model.pt2') instead.")
            if rel.endswith(("_weights_config.json", "_constants_config.json")):
                try:
                    config = json.loads(zf.read(info)).get("config") or {}
                except (ValueError, AttributeError) as e:
                    raise _unreadable(path, "a torch.export program", e) from None
                for meta in config.values():
                    if not isinstance(meta, Mapping) or meta.get("use_pickle") or \
                            str(meta.get("path_name", "")).startswith(("custom_obj_", "opaque_obj_")):
                        raise _refuse_pickle(path)
            elif rel.endswith(".pt"):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        torch.load(io.BytesIO(zf.read(info)), map_location="cpu", weights_only=True)
                except Exception:
                    raise _refuse_pickle(path) from None


def _load_export(path: Path, device: str):
    check_export_archive(path)
    try:
        ep = torch.export.load(str(path))
    except Exception as e:
        raise _unreadable(path, "a torch.export program", e) from None
    if _export_batchnorm_in_training(ep):
        raise ModelError(f"{path.name} was exported in training mode (its BatchNorm uses batch statistics); "
                         f"export it again after model.eval().")
    module = ep.module()
    if device != "cpu":
        module = module.to(device)
    fixed = _static_batch_size(ep)
    if fixed is not None:
        logger.info("%s was exported for batch size %d; batches are padded to it", path.name, fixed)
        module = FixedBatchAdapter(module, fixed)
    return ep, module


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def _merge_preprocessing(side: dict, preprocessing, in_channels: Optional[int], image_size) -> Preprocessing:
    if isinstance(preprocessing, Preprocessing):
        return preprocessing
    base = dict(side.get("preprocessing") or {})
    if preprocessing is not None:
        if not isinstance(preprocessing, Mapping):
            raise ModelError("preprocessing must be a Preprocessing or a dict with size/channels/mean/std.")
        unknown = [k for k in preprocessing if k not in PREPROCESSING_KEYS]
        if unknown:
            raise ModelError(f"Unknown preprocessing setting {unknown[0]!r}; use size, channels, mean or std.")
        base.update({k: v for k, v in preprocessing.items() if v is not None})
    if base.get("channels") is None and in_channels is not None:
        base["channels"] = int(in_channels)
    if base.get("size") is None and image_size is not None and side:
        base["size"] = [int(image_size), int(image_size)] if isinstance(image_size, int) else list(image_size)
    try:
        pre = Preprocessing.from_dict(base)
    except (TypeError, ValueError) as e:
        raise ModelError(f"The preprocessing settings {base} are not valid ({e}); fix them.") from None
    _check_preprocessing(pre)
    return pre


def _check_preprocessing(pre: Preprocessing) -> None:
    if pre.channels is not None and pre.channels not in (1, 3):
        raise ModelError(f"Preprocessing channels must be 1 or 3, got {pre.channels}.")
    if pre.size is not None and (len(pre.size) != 2 or any(int(s) < 1 for s in pre.size)):
        raise ModelError(f"Preprocessing size must be two positive numbers (height, width), got {pre.size}.")
    n = pre.channels
    for name, v in (("mean", pre.mean), ("std", pre.std)):
        if v is not None and n is not None and len(v) not in (1, n):
            raise ModelError(f"Preprocessing {name} needs 1 or {n} values, got {len(v)}.")
    if pre.std is not None and any(float(s) == 0 for s in pre.std):
        raise ModelError("Preprocessing std must not contain zeros.")


def _module_num_classes(module: nn.Module) -> Optional[int]:
    try:
        return infer_num_classes(module.state_dict())
    except Exception:
        return None


def load_model(
    path: PathLike,
    *,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    preprocessing: Union[Preprocessing, Mapping[str, Any], None] = None,
    device: Optional[str] = None,
) -> LoadedModel:
    """Load a model file safely into eval mode on ``device``.

    ``arch`` (a registry name) is needed for state_dict files unless the description sidecar names it.
    ``preprocessing`` is a full :class:`Preprocessing` (used as is) or a dict of overrides of the
    sidecar's settings. Without any description, preprocessing is the default (pixels in [0, 1]), with
    ``channels`` set to what the model's first conv takes when that is known.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"The model file {path} does not exist; check the path.")
    if path.stat().st_size == 0:
        raise ModelError(f"The model file {path} is empty; save the model again.")
    dev = resolve_device(device)
    side = read_sidecar(path)
    fmt = detect_format(path)
    sha = file_sha256(path)
    n_cls = num_classes if num_classes is not None else side.get("num_classes")
    image_size = side.get("image_size")
    exported = None

    if fmt == "torchscript":
        module, kind, arch_used = _load_torchscript(path, dev), "torchscript", arch or side.get("arch")
        in_ch = side.get("in_channels") or infer_in_channels(module.state_dict())
    elif fmt == "export":
        exported, module = _load_export(path, dev)
        kind, arch_used = "export", arch or side.get("arch")
        in_ch = side.get("in_channels") or infer_in_channels(exported.state_dict)
    else:
        sd = read_state_dict(path)
        arch_used = arch or side.get("arch")
        if not arch_used:
            raise ModelError(f"{path.name} holds only weights (a state_dict) and no description "
                             f"({sidecar_path(path).name} beside it), so FLARE needs its architecture: give the "
                             f"description, or name the architecture (CLI: --arch NAME; the dashboard's "
                             f"Architecture box), one of {', '.join(ARCHITECTURES)} or torchvision:<name>.")
        in_ch = side.get("in_channels") or infer_in_channels(sd) or 3
        if n_cls is None:
            n_cls = infer_num_classes(sd)
            if n_cls is None:
                raise ModelError(f"The number of classes of {path.name} could not be inferred; pass --num-classes.")
        module = build_model(arch_used, int(n_cls), int(in_ch), image_size)
        _load_into(module, sd, arch_used, path)
        module = module.to(dev)
        kind = "state_dict"

    if n_cls is None:
        n_cls = _module_num_classes(module)
    pre = _merge_preprocessing(side, preprocessing, in_ch, image_size)
    if n_cls is None:
        n_cls = _probe_num_classes(module, pre, dev)
    if n_cls is None:
        raise ModelError(f"The number of classes of {path.name} could not be inferred; pass --num-classes "
                         f"or add a description file {sidecar_path(path).name}.")
    if kind != "export":  # an exported graph is fixed at export time and has no eval()
        module.eval()
    logger.info("loaded %s model %s (%s, %d classes) on %s", kind, path.name, arch_used, n_cls, dev)
    return LoadedModel(module=module, kind=kind, num_classes=int(n_cls), preprocessing=pre, arch=arch_used,
                       path=str(path), sha256=sha, device=dev, exported_program=exported,
                       description=side)


def _probe_num_classes(module: nn.Module, pre: Preprocessing, device: str) -> Optional[int]:
    """Output width from one forward pass on a blank image, when the input shape is known."""
    if pre.size is None or pre.channels is None:
        return None
    try:
        with torch.inference_mode():
            out = module(torch.zeros((1, pre.channels) + tuple(pre.size), device=device))
        return int(out.shape[-1]) if out.ndim == 2 else None
    except Exception:
        return None


def describe_checkpoint(*, arch: str, num_classes: int, in_channels: int, image_size,
                        preprocessing: Union[Preprocessing, Mapping, None], classes: Optional[Sequence[str]] = None,
                        extra: Optional[Mapping[str, Any]] = None) -> dict:
    """The JSON description written next to a checkpoint."""
    if isinstance(preprocessing, Preprocessing):
        pre = preprocessing.to_dict()
    else:
        pre = Preprocessing.from_dict(dict(preprocessing or {})).to_dict()
    size = [int(image_size), int(image_size)] if isinstance(image_size, int) else (
        [int(s) for s in image_size] if image_size is not None else None)
    desc = {
        "arch": arch,
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "image_size": size,
        "preprocessing": pre,
        "classes": [str(c) for c in classes] if classes is not None else None,
        "trained_on": None,
    }
    desc.update(dict(extra or {}))
    return desc


def check_checkpoint_target(path: PathLike, inputs: Sequence[Optional[str]] = ()) -> None:
    """ModelError when writing a checkpoint at ``path`` would replace one of ``inputs`` (the training data, test
    sets...): the file itself or its description (``.json`` beside it)."""
    path = Path(path)
    written = {os.path.realpath(path), os.path.realpath(sidecar_path(path))}
    for src in inputs:
        if src and not str(src).startswith("builtin:") and os.path.realpath(Path(src).expanduser()) in written:
            raise ModelError(f"Writing the model to {path} would replace the input {src}; choose another name.")


def save_checkpoint(
    model: nn.Module,
    path: PathLike,
    *,
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size,
    preprocessing: Union[Preprocessing, Mapping, None] = None,
    classes: Optional[Sequence[str]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> dict:
    """Write the model's state_dict (``.safetensors`` by suffix, else a torch ``.pt``) and its JSON
    description next to it, each atomically. Returns the description."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        raise ModelError("The checkpoint path must not end in .json (that name is used for its description).")
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    desc = describe_checkpoint(arch=arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                               preprocessing=preprocessing, classes=classes, extra=extra)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        sd = {k: v.clone() for k, v in sd.items()}  # safetensors refuses tensors sharing memory
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(sd, str(tmp), metadata={"format": "pt", "arch": str(arch)})
    else:
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(OrderedDict(sd), tmp)
    write_json(sidecar_path(path), desc)
    logger.info("saved %s checkpoint %s", arch, path)
    return desc
