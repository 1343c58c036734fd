"""Record intermediate activations with temporary forward hooks (names in, dict out)."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from flare_core.errors import FlareError

Reduce = Callable[[str, torch.Tensor], Any]


def unknown_name_error(name: str, valid: Sequence[str], what: str = "layer") -> FlareError:
    """A FlareError naming the closest valid names."""
    close = difflib.get_close_matches(name, list(valid), n=5, cutoff=0.4)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else (
        f"valid names include {', '.join(repr(v) for v in list(valid)[:8])}"
        + (f" and {len(valid) - 8} more" if len(valid) > 8 else "") + "."
    )
    return FlareError(f"Unknown {what} {name!r}; {hint}")


def _split(spec: str) -> tuple:
    base, sep, mode = spec.rpartition(":")
    if sep and mode in ("input", "output"):
        return base, mode
    return spec, None


class ActivationRecorder:
    """Context manager recording activations of named submodules during forward passes.

    ``layer_names`` are submodule names of ``module``; ``'name:input'`` / ``'name:output'`` pick the
    module's first input or its output. Without a suffix BatchNorm layers record their INPUT (a
    forward pre-hook) and every other module its output. ``reduce(name, tensor)`` (optional) is
    applied inside the hook, so only its (small) result is kept; otherwise a detached clone is kept.
    The model is put in eval mode inside the block (``eval_mode=True``); every submodule's training
    flag is restored and every hook removed on exit, also after an exception.
    ``activations`` maps each name to the value of the latest forward pass.
    """

    def __init__(self, module: nn.Module, layer_names: Sequence[str], *, reduce: Optional[Reduce] = None,
                 eval_mode: bool = True) -> None:
        self.module = module
        self.layer_names = list(layer_names)
        self.reduce = reduce
        self.eval_mode = eval_mode
        self.activations: dict = {}
        self._handles: list = []
        self._flags: dict = {}
        modules = dict(module.named_modules())
        self._targets = []
        for spec in self.layer_names:
            base, mode = _split(spec)
            if base not in modules:
                raise unknown_name_error(spec, [n for n in modules if n])
            sub = modules[base]
            if mode is None:
                mode = "input" if isinstance(sub, nn.modules.batchnorm._BatchNorm) else "output"
            self._targets.append((spec, sub, mode))

    def _store(self, spec: str, value) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"Layer {spec!r} produced a {type(value).__name__}, not a tensor.")
        self.activations[spec] = self.reduce(spec, value) if self.reduce else value.detach().clone()

    def __enter__(self) -> "ActivationRecorder":
        self._flags = {m: m.training for m in self.module.modules()}
        try:
            if self.eval_mode:
                self.module.eval()
            for spec, sub, mode in self._targets:
                if mode == "input":
                    def pre(mod, args, spec=spec):
                        self._store(spec, args[0] if args else None)
                    self._handles.append(sub.register_forward_pre_hook(pre))
                else:
                    def post(mod, args, output, spec=spec):
                        self._store(spec, output)
                    self._handles.append(sub.register_forward_hook(post))
        except BaseException:
            self._cleanup()
            raise
        return self

    def _cleanup(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for m, flag in self._flags.items():
            m.training = flag

    def __exit__(self, exc_type, exc, tb) -> None:
        self._cleanup()


def extract_activations(model, x: torch.Tensor, layer_names: Sequence[str]) -> dict:
    """Activations of ``layer_names`` for the batch ``x`` (already preprocessed), in eval mode.

    Works for eager, TorchScript and ``torch.export`` models (``LoadedModel`` or ``nn.Module``). Names
    are those of :func:`flare_core.features.list_layers` (BatchNorm names give the BN input),
    ``'<linear>:input'`` names, Grad-CAM layer names, and for eager models any submodule name
    (optionally suffixed ``:input`` / ``:output``). Returns {name: tensor} on the model's device.
    """
    from flare_core.features.view import model_view

    view = model_view(model, x)
    specs = {}
    for name in layer_names:
        point = view.find(name, ("bn", "block", "linear")) or view.find(name, ("cam",))
        if point is not None:
            specs[name] = point.spec
        elif view.is_graph:
            raise unknown_name_error(name, [p.name for p in view.points])
        else:
            specs[name] = name
    parts: dict = {spec: [] for spec in specs.values()}
    with torch.no_grad(), ActivationRecorder(view.module, list(parts)) as rec:
        for chunk, n in view.run_chunks(x):
            view.module(chunk)
            for spec in parts:
                parts[spec].append(rec.activations[spec][:n])
    return {name: torch.cat(parts[spec]) if len(parts[spec]) > 1 else parts[spec][0]
            for name, spec in specs.items()}
