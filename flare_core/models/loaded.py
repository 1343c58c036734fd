"""A model ready for inference, with everything that describes how it was loaded."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from flare_core.models.preprocessing import Preprocessing


@dataclass
class LoadedModel:
    """module: an eager ``nn.Module``, a ``torch.jit.ScriptModule`` (kind 'torchscript') or the
    ``nn.Module`` of a ``torch.export`` program (kind 'export', from ``ExportedProgram.module()``).
    kind: 'state_dict' | 'torchscript' | 'export' | 'module' (built in memory, e.g. by tests or training).
    """

    module: torch.nn.Module
    kind: str
    num_classes: int
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    arch: Optional[str] = None
    path: Optional[str] = None
    sha256: Optional[str] = None
    device: str = "cpu"
    exported_program: Optional[object] = None  # the torch.export.ExportedProgram for kind 'export'
    description: dict = field(default_factory=dict)  # the model's JSON sidecar (classes, trained_on, ...), {} if none

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
            "path": self.path,
            "sha256": self.sha256,
            "device": self.device,
        }
