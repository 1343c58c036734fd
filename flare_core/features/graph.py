"""torch.export models: a tapped fx copy whose ``nn.Identity`` taps can be hooked.

``ExportedProgram.module()`` is a flat graph of aten ops (no submodules to hook), so we build our OWN
``torch.fx.GraphModule`` from its graph and insert ``nn.Identity`` "tap" modules at the values chosen by
:func:`flare_core.features.plan.plan_taps`. The copy shares the weight tensors of the user's model (no
weight copy), has the shape guards removed (any batch size runs) and always uses inference-mode batch
norm; the user's module is never modified.
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.fx as fx
from torch import nn

from flare_core.features.plan import Op, plan_taps

logger = logging.getLogger(__name__)

TAP_PREFIX = "_flare_tap_"
_TUPLE_OPS = {
    "aten.native_group_norm", "aten.native_layer_norm", "aten._native_batch_norm_legit_no_training",
    "aten._native_batch_norm_legit", "aten.native_batch_norm", "aten.cudnn_batch_norm",
    "aten.miopen_batch_norm",
}
_TRANSPOSES = {"aten.t", "aten.permute", "aten.transpose", "aten.numpy_T"}


@dataclass
class TapPoint:
    """A tapped value: hook the output of submodule ``tap`` of the tapped module."""

    name: str
    kind: str  # 'bn' | 'block' | 'linear' | 'cam'
    tap: str
    channel_dim: int = 1
    running_mean: Optional[torch.Tensor] = None
    running_var: Optional[torch.Tensor] = None
    eps: float = 1e-5


@dataclass
class TappedModel:
    """``module`` runs the tapped copy; ``bind(user_module)``, when set, builds a new such runner (so a
    cache can keep the recipe without a strong reference to the user's module)."""

    module: nn.Module
    points: list = field(default_factory=list)
    bind: Optional[Callable] = None


def op_packet(node: fx.Node) -> str:
    """'aten.conv2d' for a call_function node of ``torch.ops.aten.conv2d.default``; '' otherwise."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return ""
    return str(node.target).rsplit(".", 1)[0]


def is_aten_graph(module: nn.Module) -> bool:
    """True for a GraphModule of aten ops (``ExportedProgram.module()``), which hooks cannot look into."""
    if not isinstance(module, fx.GraphModule):
        return False
    return any(op_packet(n) for n in module.graph.nodes)


def resolve(root, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _copy_graph(source: fx.GraphModule) -> fx.Graph:
    """A plain-codegen copy of the graph: no pytree specs, no shape guards, one tensor output."""
    graph = fx.Graph()
    out = graph.graph_copy(source.graph, {})
    if isinstance(out, (tuple, list)):
        if len(out) != 1:
            logger.info("Model returns %d outputs; the first is used as the logits.", len(out))
        out = out[0]
    graph.output(out)
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards") and not node.users:
            graph.erase_node(node)
    for node in graph.nodes:  # our copy always runs with inference-mode batch norm
        if op_packet(node) == "aten.batch_norm" and len(node.args) > 5 and node.args[5] is True:
            node.update_arg(5, False)
        elif op_packet(node) in ("aten._native_batch_norm_legit", "aten.native_batch_norm"):
            logger.warning("Graph model op %s was exported in training mode; batch statistics are used.", node)
    return graph


def _owner_fn(source: fx.GraphModule):
    def owner(value, leaf: str) -> Optional[str]:
        if isinstance(value, fx.Node) and op_packet(value) in _TRANSPOSES and value.args:
            value = value.args[0]
        if not isinstance(value, fx.Node) or value.op != "get_attr":
            return None
        path, _, attr = str(value.target).rpartition(".")
        return (path or attr) if attr == leaf else str(value.target)

    def weight_ndim(value) -> Optional[int]:
        if isinstance(value, fx.Node) and value.op == "get_attr":
            return resolve(source, str(value.target)).dim()
        val = value.meta.get("val") if isinstance(value, fx.Node) else None
        return val.dim() if val is not None else None

    return owner, weight_ndim


def _tensor_output(node: fx.Node) -> fx.Node:
    """The node holding the op's tensor result: getitem[0] for ops returning tuples."""
    if op_packet(node) in _TUPLE_OPS:
        for user in node.users:
            if user.op == "call_function" and user.target is operator.getitem and user.args[1] == 0:
                return user
    return node


def build_tapped_graph(source: fx.GraphModule) -> TappedModel:
    """Copy ``source``'s graph and insert nn.Identity taps at the planned values."""
    graph = _copy_graph(source)
    ops = [Op(n, op_packet(n), n.name, list(n.args)) for n in graph.nodes if op_packet(n)]
    owner, weight_ndim = _owner_fn(source)
    planned = plan_taps(ops, owner, weight_ndim)

    taps: dict = {}
    value_taps: dict = {}

    def new_tap() -> str:
        name = f"{TAP_PREFIX}{len(taps)}"
        taps[name] = nn.Identity()
        return name

    def tap_output(node: fx.Node) -> str:
        node = _tensor_output(node)
        if node not in value_taps:  # one tap per value, shared by every point on it
            name = new_tap()
            with graph.inserting_after(node):
                tap = graph.call_module(name, (node,))
            node.replace_all_uses_with(tap, delete_user_cb=lambda user: user is not tap)
            value_taps[node] = name
        return value_taps[node]

    def tap_input(node: fx.Node, index: int) -> str:
        name = new_tap()
        with graph.inserting_before(node):
            tap = graph.call_module(name, (node.args[index],))
        node.update_arg(index, tap)
        return name

    points = []
    for i, t in sorted(enumerate(planned), key=lambda it: it[1].arg_index is None):  # input taps first
        tap = tap_output(t.op.handle) if t.arg_index is None else tap_input(t.op.handle, t.arg_index)
        mean = resolve(source, str(t.mean.target)) if t.kind == "bn" else None
        var = resolve(source, str(t.var.target)) if t.kind == "bn" else None
        eps = float(t.eps) if t.kind == "bn" and t.eps is not None else 1e-5
        points.append((i, TapPoint(t.name, t.kind, tap, t.channel_dim, mean, var, eps)))
    points = [p for _, p in sorted(points, key=lambda ip: ip[0])]

    root: dict = dict(taps)
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module") and node.target not in root:
            root[node.target] = resolve(source, str(node.target))
    graph.lint()
    module = fx.GraphModule(root, graph, class_name="FlareTappedGraph")
    if not any(True for _ in module.parameters()):
        # pytorch-grad-cam reads the device from the first parameter.
        device = next((b.device for b in module.buffers()), torch.device("cpu"))
        module.register_parameter("_flare_device_anchor",
                                  nn.Parameter(torch.zeros(0, device=device), requires_grad=False))
    module.eval()
    return TappedModel(module=module, points=points)
