"""TorchScript models: taps inserted into a copy of the model's inlined TorchScript graph.

TorchScript modules refuse forward hooks. We take a COPY of the inlined forward graph
(``ScriptModule.inlined_graph``), insert calls to the custom op ``flare_workbench::tap(x, id)`` at the
values chosen by :func:`flare_core.features.plan.plan_taps`, and compile the copy into a new function
run on the user's (unchanged) module. The tap op's kernel is a Python ``CompositeImplicitAutograd``
kernel that calls an ``nn.Identity`` module registered under ``id``: forward hooks on that module see
the real (autograd-tracked) tensor, so the eager hook machinery and Grad-CAM work unchanged.

This runs the model with TorchScript itself, so control flow and loops (e.g. GroupNorm's batch-size
check, which ``torch._export.converter.TS2EPConverter`` rejects) are supported.
"""
from __future__ import annotations

import functools
import itertools
import logging
import sys
import types
import weakref
from typing import Iterator, Optional

import torch
from torch import nn

from flare_core.features.graph import TappedModel, TapPoint, resolve
from flare_core.features.plan import Op, plan_taps

logger = logging.getLogger(__name__)

_OP_NAMESPACE = "flare_workbench"
_HOLDER = "_flare_workbench_tap_op"  # survives re-imports of this module (the op can be defined once)
_TRANSPOSES = {"aten::t", "aten::permute", "aten::transpose", "aten::numpy_T"}


def _tap_op() -> types.ModuleType:
    """The process-wide tap op and its registry {id: weakref(nn.Identity)}; defined on first use."""
    holder = sys.modules.get(_HOLDER)
    if holder is None:
        holder = types.ModuleType(_HOLDER)
        holder.taps = {}
        holder.ids = itertools.count()
        taps = holder.taps

        def kernel(x: torch.Tensor, tap_id: int) -> torch.Tensor:
            ref = taps.get(tap_id)
            tap = ref() if ref is not None else None
            return tap(x) if tap is not None else x

        lib = torch.library.Library(_OP_NAMESPACE, "DEF")
        lib.define("tap(Tensor(a) x, int tap_id) -> Tensor(a)")
        lib.impl("tap", kernel, "CompositeImplicitAutograd")
        holder.lib = lib  # the op lives as long as this Library object
        sys.modules[_HOLDER] = holder
    return holder


class ScriptTapRunner(nn.Module):
    """Runs the tapped copy of a TorchScript graph on the user's module (a submodule: eval() reaches it)."""

    def __init__(self, script: torch.jit.ScriptModule, function, taps: dict) -> None:
        super().__init__()
        self.script = script
        for name, tap in taps.items():
            self.add_module(name, tap)
        self._function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._function(self.script._c, x)
        return out[0] if isinstance(out, (tuple, list)) else out


def _walk(block) -> Iterator:
    for node in block.nodes():
        yield node
        for sub in node.blocks():
            yield from _walk(sub)


def _is_tensor(value) -> bool:
    return isinstance(value.type(), torch._C.TensorType)


def _attr_path(value) -> Optional[str]:
    """'layer1.0.weight' for a value read by a chain of prim::GetAttr from the module; else None."""
    parts = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        parts.append(node.s("name"))
        value = node.input()
        node = value.node()
    if not parts or node.kind() != "prim::Param":
        return None
    return ".".join(reversed(parts))


def _constant(value, script):
    if value.node().kind() == "prim::Constant":
        return value.toIValue()
    path = _attr_path(value)
    return resolve(script, path) if path else None


def _ops(graph) -> list:
    counts: dict = {}
    ops = []
    for node in _walk(graph):
        kind = node.kind()
        if not kind.startswith("aten::") or node.outputsSize() != 1 or not _is_tensor(node.output()):
            continue
        short = kind.split("::", 1)[1]
        k = counts.get(short, 0)
        counts[short] = k + 1
        ops.append(Op(node, kind.replace("::", "."), short if k == 0 else f"{short}_{k}", list(node.inputs())))
    return ops


def build_tapped_script(script: torch.jit.ScriptModule) -> TappedModel:
    """A runnable tapped copy of ``script``'s forward graph (the user's module is not modified)."""
    holder = _tap_op()
    graph = script.inlined_graph  # a fresh copy
    ops = _ops(graph)

    def owner(value, leaf: str) -> Optional[str]:
        if value is None:
            return None
        if value.node().kind() in _TRANSPOSES:
            value = value.node().inputsAt(0)
        path = _attr_path(value)
        if path is None:
            return None
        head, _, attr = path.rpartition(".")
        return (head or attr) if attr == leaf else path

    def weight_ndim(value) -> Optional[int]:
        path = _attr_path(value) if value is not None else None
        tensor = resolve(script, path) if path else None
        return tensor.dim() if isinstance(tensor, torch.Tensor) else None

    planned = plan_taps(ops, owner, weight_ndim)
    taps: dict = {}
    value_taps: dict = {}

    def make_tap(value, before):
        tap_id = next(holder.ids)
        name = f"_flare_tap_{len(taps)}"
        module = nn.Identity()
        taps[name] = module
        holder.taps[tap_id] = weakref.ref(module)
        weakref.finalize(module, holder.taps.pop, tap_id, None)
        const = graph.insertConstant(tap_id)
        node = graph.create(f"{_OP_NAMESPACE}::tap", [value, const], 1)
        node.output().setType(value.type())
        if before is None:
            node.insertAfter(value.node())
        else:
            node.insertBefore(before)
        const.node().moveBefore(node)
        return name, node

    def tap_output(node) -> str:
        value = node.output()
        if value.debugName() not in value_taps:
            name, tap = make_tap(value, None)
            value.replaceAllUsesWith(tap.output())
            tap.replaceInput(0, value)
            value_taps[value.debugName()] = name
        return value_taps[value.debugName()]

    def tap_input(node, index: int) -> str:
        name, tap = make_tap(node.inputsAt(index), node)
        node.replaceInput(index, tap.output())
        return name

    for op in ops:  # our copy always runs with inference-mode batch norm
        if op.packet == "aten.batch_norm" and op.args[5].node().kind() == "prim::Constant" \
                and op.args[5].toIValue() is True:
            false = graph.insertConstant(False)
            false.node().moveBefore(op.handle)
            op.handle.replaceInput(5, false)

    points = []
    for i, t in sorted(enumerate(planned), key=lambda it: it[1].arg_index is None):  # input taps first
        name = tap_output(t.op.handle) if t.arg_index is None else tap_input(t.op.handle, t.arg_index)
        mean = resolve(script, _attr_path(t.mean)) if t.kind == "bn" else None
        var = resolve(script, _attr_path(t.var)) if t.kind == "bn" else None
        eps = float(_constant(t.eps, script)) if t.kind == "bn" and t.eps is not None else 1e-5
        points.append((i, TapPoint(t.name, t.kind, name, t.channel_dim, mean, var, eps)))
    points = [p for _, p in sorted(points, key=lambda ip: ip[0])]

    graph.lint()
    function = torch._C._create_function_from_graph(f"flare_tapped_{id(graph)}", graph)
    bind = functools.partial(ScriptTapRunner, function=function, taps=taps)
    return TappedModel(module=bind(script), points=points, bind=bind)
