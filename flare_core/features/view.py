"""One view of any model format: a runnable module plus its hookable points in execution order.

Eager models are used as they are (hooks on their real submodules, removed after use). ``torch.export``
models are replaced by a tapped fx copy (:mod:`.graph`), TorchScript models by a tapped copy of their
TorchScript graph (:mod:`.script`); both rules are in :mod:`.plan`.
The view is built once per model object (a probe forward pass on a tiny example input fixes the
execution order and the channel counts) and cached in a ``WeakKeyDictionary``.

Eager rules: ``bn`` = every ``_BatchNorm`` module with running statistics (its INPUT is recorded);
``block`` = the output of every ``Conv2d``, ``GroupNorm``, ``LayerNorm`` and ``InstanceNorm`` module
(when there is none: every ``Linear`` but the last executed one); ``linear`` = the INPUT of every
``Linear`` module, named ``'<module>:input'``; ``cam`` = every submodule called once whose output is
(B, C, H, W) with H*W > 1.
"""
from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn

from flare_core.errors import ModelError
from flare_core.features.graph import build_tapped_graph, is_aten_graph
from flare_core.features.script import build_tapped_script
from flare_core.models.loaded import LoadedModel
from flare_core.models.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

ModelLike = Union[LoadedModel, nn.Module]
_CANDIDATE_SIZES = (32, 28, 224, 64, 96, 16)
_BLOCK_TYPES = (nn.Conv2d, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class Point:
    """A hookable value: ``target`` is a submodule of ``ModelView.module``, ``mode`` 'input'|'output'."""

    name: str
    kind: str  # 'bn' | 'block' | 'linear' | 'cam'
    target: str
    mode: str
    channel_dim: int = 1
    running_mean: Optional[torch.Tensor] = None
    running_var: Optional[torch.Tensor] = None
    eps: float = 1e-5
    shape: tuple = ()  # per-sample shape seen in the probe pass

    @property
    def spec(self) -> str:
        """The recorder name: ``target`` or ``target:input``."""
        return f"{self.target}:input" if self.mode == "input" else self.target

    @property
    def channels(self) -> int:
        if not self.shape:
            return 0
        return int(self.shape[self.channel_dim - 1] if self.channel_dim > 0 else self.shape[self.channel_dim])


@dataclass
class ModelView:
    module: nn.Module
    is_graph: bool
    points: list = field(default_factory=list)
    fixed_batch: Optional[int] = None  # a graph that only runs with this batch size (run_chunks pads)
    bind: Optional[Callable] = None  # user module -> runnable module (cached views keep no strong ref)

    def run_chunks(self, x: torch.Tensor) -> Iterator:
        """(chunk, n_valid) pairs covering ``x``: ``x`` itself, or fixed-size chunks padded by repetition."""
        if self.fixed_batch is None:
            yield x, len(x)
            return
        for start in range(0, len(x), self.fixed_batch):
            chunk = x[start:start + self.fixed_batch]
            yield repeat_batch(chunk, self.fixed_batch), len(chunk)

    def of_kind(self, kind: str) -> list:
        return [p for p in self.points if p.kind == kind]

    def find(self, name: str, kinds: tuple) -> Optional[Point]:
        for p in self.points:
            if p.name == name and p.kind in kinds:
                return p
        return None


_VIEWS: "weakref.WeakKeyDictionary[nn.Module, ModelView]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def unwrap(model: ModelLike) -> tuple:
    """(module, preprocessing or None, kind or None)."""
    if isinstance(model, LoadedModel):
        module = model.module
        if model.kind == "export" and not isinstance(module, torch.fx.GraphModule) and model.exported_program:
            module = model.exported_program.module()
        return module, model.preprocessing, model.kind
    if isinstance(model, nn.Module):
        return model, None, None
    raise TypeError(f"Expected a LoadedModel or torch.nn.Module, got {type(model).__name__}.")


def module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _infer_channels(module: nn.Module) -> int:
    for tensor in module.state_dict().values():
        if tensor.dim() == 4:
            return int(tensor.shape[1])
    return 3


def _placeholder_val(module: nn.Module):
    """The example value recorded for a graph module's (B, C, H, W) input, if any."""
    if isinstance(module, torch.fx.GraphModule):
        for node in module.graph.nodes:
            val = node.meta.get("val") if node.op == "placeholder" else None
            if isinstance(val, torch.Tensor) and val.dim() == 4:
                return val
    return None


def _placeholder_shape(module: nn.Module) -> Optional[tuple]:
    val = _placeholder_val(module)
    if val is None or not all(isinstance(s, int) for s in val.shape[1:]):
        return None  # unknown or symbolic sizes
    return tuple(val.shape[1:])


def static_batch(module: nn.Module) -> Optional[int]:
    """The batch size a graph module was exported with, when it is static."""
    val = _placeholder_val(module)
    return val.shape[0] if val is not None and isinstance(val.shape[0], int) else None


def repeat_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """A batch of exactly ``n`` samples: ``x`` cut or cycled."""
    return x[torch.arange(n, device=x.device) % len(x)]


def example_inputs(module: nn.Module, preprocessing: Optional[Preprocessing]) -> list:
    """Candidate tiny (2, C, H, W) inputs, the most likely first."""
    device = module_device(module)
    shape = _placeholder_shape(module)
    if shape is not None:
        return [torch.rand(2, *shape, device=device)]
    pre = preprocessing or Preprocessing()
    channels = pre.channels or _infer_channels(module)
    sizes = [tuple(pre.size)] if pre.size else [(s, s) for s in _CANDIDATE_SIZES]
    return [torch.rand(2, channels, h, w, device=device) for h, w in sizes]


def _first_working(module: nn.Module, candidates: list) -> torch.Tensor:
    if len(candidates) == 1:
        return candidates[0]
    flags = _training_flags(module)
    try:
        module.train(False)
        for x in candidates:
            try:
                with torch.no_grad():
                    module(x)
                return x
            except Exception:  # wrong guess of the input size: try the next one
                continue
    finally:
        _restore_training(flags)
    raise ModelError(
        "Could not find an input size this model accepts; set the model's preprocessing size (e.g. 32x32)."
    )


def _training_flags(module: nn.Module) -> dict:
    return {m: m.training for m in module.modules()}


def _restore_training(flags: dict) -> None:
    for m, flag in flags.items():
        m.training = flag


def _identity(module: nn.Module) -> nn.Module:
    return module


def _eager_view(module: nn.Module, example: torch.Tensor) -> ModelView:
    names = {m: n for n, m in module.named_modules() if n}
    order: list = []
    calls: dict = {}
    in_shapes: dict = {}
    out_shapes: dict = {}

    def hook(mod, args, output):
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        if name not in out_shapes:
            order.append(name)
            first = args[0] if args else None
            in_shapes[name] = tuple(first.shape[1:]) if isinstance(first, torch.Tensor) else ()
            out_shapes[name] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None

    handles = [m.register_forward_hook(hook) for m in names]
    flags = _training_flags(module)
    try:
        module.eval()
        with torch.no_grad():
            module(example)
    except Exception as exc:
        raise ModelError(
            f"The model could not run on a {tuple(example.shape[1:])} input ({type(exc).__name__}: "
            f"{str(exc)[:160]}); check the model's preprocessing size and channels."
        ) from exc
    finally:
        for h in handles:
            h.remove()
        _restore_training(flags)

    mods = dict(module.named_modules())
    points = []
    for name in order:
        m = mods[name]
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            points.append(Point(name, "bn", name, "input", 1, m.running_mean, m.running_var, float(m.eps),
                                in_shapes[name]))
    blocks = [n for n in order if isinstance(mods[n], _BLOCK_TYPES) and out_shapes[n]]
    linears = [n for n in order if isinstance(mods[n], nn.Linear)]
    if not blocks:
        blocks = linears[:-1]
    for name in blocks:
        channel_dim = -1 if isinstance(mods[name], (nn.LayerNorm, nn.Linear)) else 1
        points.append(Point(name, "block", name, "output", channel_dim, shape=out_shapes[name]))
    for name in linears:
        points.append(Point(f"{name}:input", "linear", name, "input", -1, shape=in_shapes[name]))
    for name in order:
        shape = out_shapes[name]
        if calls[name] == 1 and shape and len(shape) == 3 and shape[1] * shape[2] > 1:
            points.append(Point(name, "cam", name, "output", 1, shape=shape))
    return ModelView(module=module, is_graph=False, points=points, bind=_identity)


def _fixed_batch(module: nn.Module, example: torch.Tensor, exported: Optional[int]) -> Optional[int]:
    """``exported`` when the graph fails on any other batch size (e.g. a reshape with a baked-in batch)."""
    if exported is None:
        return None
    flags = _training_flags(module)
    try:
        module.eval()
        with torch.no_grad():
            module(repeat_batch(example, exported + 1))
        return None
    except Exception:  # sizes baked into the graph
        return exported
    finally:
        _restore_training(flags)


def _graph_view(module: nn.Module, candidates: list) -> ModelView:
    if isinstance(module, torch.jit.ScriptModule):
        tapped = build_tapped_script(module)
    else:
        tapped = build_tapped_graph(module)
    example = _first_working(tapped.module, candidates)
    fixed = _fixed_batch(tapped.module, example, static_batch(module))
    if fixed is not None:
        logger.info("The graph only runs with batch size %d (exported with a static batch); "
                    "inputs are run in padded chunks of that size.", fixed)
        example = repeat_batch(example, fixed)
    points = [Point(p.name, p.kind, p.tap, "output", p.channel_dim, p.running_mean, p.running_var, p.eps)
              for p in tapped.points]
    shapes: dict = {}
    taps = {p.target for p in points}

    def hook(mod, args, output):
        shapes.setdefault(names[mod], tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None)

    names = {m: n for n, m in tapped.module.named_modules() if n in taps}
    handles = [m.register_forward_hook(hook) for m in names]
    flags = _training_flags(tapped.module)
    try:
        tapped.module.eval()
        with torch.no_grad():
            tapped.module(example)
    except Exception as exc:
        raise ModelError(
            f"The model's graph could not run on a {tuple(example.shape[1:])} input ({type(exc).__name__}); "
            "check the model's preprocessing size and channels."
        ) from exc
    finally:
        for h in handles:
            h.remove()
        _restore_training(flags)
    kept = []
    for p in points:
        p.shape = shapes.get(p.target) or ()
        if p.kind == "cam" and not (len(p.shape) == 3 and p.shape[1] * p.shape[2] > 1):
            continue
        if p.shape or p.kind != "cam":
            kept.append(p)
    return ModelView(module=tapped.module, is_graph=True, points=kept, fixed_batch=fixed, bind=tapped.bind)


def is_graph_model(module: nn.Module, kind: Optional[str] = None) -> bool:
    return kind in ("torchscript", "export") or isinstance(module, torch.jit.ScriptModule) or is_aten_graph(module)


def model_view(model: ModelLike, example_input: Optional[torch.Tensor] = None) -> ModelView:
    """The (cached) view of ``model``; ``example_input`` is a (B, C, H, W) batch it accepts."""
    module, preprocessing, kind = unwrap(model)
    with _LOCK:
        cached = _VIEWS.get(module)
        if cached is None:
            graph = is_graph_model(module, kind)
            if example_input is not None:
                candidates = [example_input[:2]]
            else:
                candidates = example_inputs(module, preprocessing)
            view = _graph_view(module, candidates) if graph else _eager_view(module, _first_working(module, candidates))
            logger.debug("Built %s view with %d points.", "graph" if graph else "eager", len(view.points))
            # the cache must not hold the key strongly: keep the binder, not a module built on the key
            cached = replace(view, module=None) if view.bind is not None else view
            _VIEWS[module] = cached
    return cached if cached.bind is None else replace(cached, module=cached.bind(module))
