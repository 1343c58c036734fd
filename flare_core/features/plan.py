"""Which values of an aten-op graph to tap, independent of the IR (torch.fx or TorchScript).

Rules (ops in execution order):
- ``bn``: every batch-norm op whose running mean is a stored buffer; the tap is on the op's INPUT;
  named by the buffer's owner path (``'layer1.0.bn1'`` from ``layer1.0.bn1.running_mean``).
- ``block``: the output of every 2-d convolution and group/layer/instance norm op (named by the owner
  path of the weight, else the op's name); when there is none, every linear op's output but the last.
- ``linear``: the INPUT of every linear/addmm/mm op, named ``'<weight owner>:input'``.
- ``cam``: outputs of convolution (named as their block), batch-norm, activation and residual-add ops
  (op names): the candidates for Grad-CAM target layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

# op packet -> index of eps (running_mean / running_var are inputs 3 and 4 for all of them)
BN_EPS_INDEX = {
    "aten.batch_norm": 7,
    "aten._native_batch_norm_legit_no_training": 6,
    "aten._native_batch_norm_legit": 7,
    "aten.native_batch_norm": 7,
    "aten.cudnn_batch_norm": 7,
    "aten.miopen_batch_norm": 7,
}
CONV = {"aten.conv2d", "aten.convolution", "aten._convolution", "aten.cudnn_convolution"}
# norm packet -> (index of weight, channel dim of the output)
NORMS = {
    "aten.group_norm": (2, 1), "aten.native_group_norm": (1, 1), "aten.instance_norm": (1, 1),
    "aten.layer_norm": (2, -1), "aten.native_layer_norm": (2, -1),
}
LINEAR_INPUT_WEIGHT = {"aten.linear": (0, 1), "aten.addmm": (1, 2), "aten.mm": (0, 1)}
ACTIVATIONS = {
    "aten.relu", "aten.relu_", "aten.hardtanh", "aten.hardtanh_", "aten.relu6", "aten.silu", "aten.silu_",
    "aten.gelu", "aten.leaky_relu", "aten.leaky_relu_", "aten.elu", "aten.hardswish", "aten.hardswish_",
    "aten.sigmoid", "aten.mish",
}
ADD = {"aten.add", "aten.add_"}


@dataclass
class Op:
    """One op of a graph: ``handle`` is the IR node, ``args`` its positional inputs (IR values)."""

    handle: Any
    packet: str  # 'aten.conv2d'
    name: str
    args: list


@dataclass
class PlannedTap:
    kind: str  # 'bn' | 'block' | 'linear' | 'cam'
    name: str
    op: Op
    arg_index: Optional[int] = None  # tap this input of the op; None: tap the op's output
    channel_dim: int = 1
    mean: Any = None
    var: Any = None
    eps: Any = None


def _unique(name: str, used: set) -> str:
    out, k = name, 2
    while out in used:
        out, k = f"{name}#{k}", k + 1
    used.add(out)
    return out


def plan_taps(ops: list, owner: Callable[[Any, str], Optional[str]],
              weight_ndim: Callable[[Any], Optional[int]]) -> list:
    """PlannedTaps for ``ops`` (execution order). ``owner(value, leaf)`` gives the owner path of a stored
    tensor whose attribute name is ``leaf`` (None when the value is not a stored tensor);
    ``weight_ndim(value)`` the number of dims of a stored weight (None when unknown)."""
    used = {k: set() for k in ("bn", "block", "linear", "cam")}
    taps, linear_outputs = [], []
    for op in ops:
        arg = (lambda i: op.args[i] if i < len(op.args) else None)
        if op.packet in BN_EPS_INDEX:
            mean_owner = owner(arg(3), "running_mean")
            if mean_owner is not None and owner(arg(4), "running_var") is not None:
                taps.append(PlannedTap("bn", _unique(mean_owner, used["bn"]), op, 0, 1, arg(3), arg(4),
                                       arg(BN_EPS_INDEX[op.packet])))
            taps.append(PlannedTap("cam", _unique(op.name, used["cam"]), op))
        elif op.packet in CONV and (op.packet == "aten.conv2d" or weight_ndim(arg(1)) == 4):
            name = owner(arg(1), "weight") or op.name
            taps.append(PlannedTap("block", _unique(name, used["block"]), op))
            taps.append(PlannedTap("cam", _unique(name, used["cam"]), op))
        elif op.packet in NORMS:
            w_index, channel_dim = NORMS[op.packet]
            name = owner(arg(w_index), "weight") or op.name
            taps.append(PlannedTap("block", _unique(name, used["block"]), op, None, channel_dim))
        elif op.packet in LINEAR_INPUT_WEIGHT:
            i_in, i_w = LINEAR_INPUT_WEIGHT[op.packet]
            name = owner(arg(i_w), "weight") or op.name
            taps.append(PlannedTap("linear", _unique(f"{name}:input", used["linear"]), op, i_in, -1))
            linear_outputs.append((op, name))
        elif op.packet in ACTIVATIONS or op.packet in ADD:
            taps.append(PlannedTap("cam", _unique(op.name, used["cam"]), op))
    if not any(t.kind == "block" for t in taps):  # plain MLPs: every linear output but the classifier's
        taps += [PlannedTap("block", _unique(name, used["block"]), op, None, -1) for op, name in linear_outputs[:-1]]
    return taps
