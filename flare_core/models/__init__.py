"""Models: architectures by name, safe loading, checkpoints with a JSON description, training."""
from flare_core.models.architectures import (  # noqa: F401
    ARCHITECTURE_HELP,
    ARCHITECTURES,
    architecture_names,
    build_model,
)
from flare_core.models.loaded import LoadedModel  # noqa: F401
from flare_core.models.loading import (  # noqa: F401
    load_model,
    read_sidecar,
    resolve_device,
    save_checkpoint,
    sidecar_path,
)
from flare_core.models.preprocessing import Preprocessing  # noqa: F401
from flare_core.models.training import evaluate, predict_logits, train_model  # noqa: F401

__all__ = [
    "ARCHITECTURES", "ARCHITECTURE_HELP", "architecture_names", "build_model", "LoadedModel", "Preprocessing",
    "load_model", "save_checkpoint", "read_sidecar", "sidecar_path", "resolve_device",
    "train_model", "evaluate", "predict_logits",
]
