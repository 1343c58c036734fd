"""The built-in demo: a poisoned Fashion-MNIST scenario made by the lab (scikit-learn digits when
Fashion-MNIST is not installed), with a small model trained by the project's own code shipped in
``assets/demo/<source>/`` so the demo starts in seconds.

Everything is deterministic: the poisoned data is regenerated from the clean source and the attack's seed
into a cache folder (``$FLARE_CACHE`` or ``~/.cache/flare-workbench``), never into the repository.
``FLARE_DEMO_SIZE=small`` (or ``size="small"``) analyses a stratified 200-per-class subset of the same
training set, for quick tests.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from flare_core.data import lab
from flare_core.progress import ProgressCallback, ensure_progress

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"

# What each demo is: the clean source, how many training samples per class, and the attack.
DEMO_SPECS = {
    "fashion-mnist": dict(data="builtin:fashion-mnist", per_class=1000, attack="badnets", rate=0.05, target=0,
                          mode="all-to-one", seed=0, arch="small-cnn", epochs=6),
    "digits": dict(data="builtin:digits", per_class=None, attack="badnets", rate=0.1, target=0,
                   mode="all-to-one", seed=0, arch="small-cnn", epochs=30),
}
SMALL_PER_CLASS = 200


@dataclass
class DemoScenario:
    source: str
    title: str
    description: str
    model_path: Path
    data_path: Path
    ground_truth_path: Path
    test_path: Path
    poisoned_test_path: Path


def cache_dir() -> Path:
    return Path(os.environ.get("FLARE_CACHE", Path.home() / ".cache" / "flare-workbench"))


def demo_source() -> str:
    from flare_core.data.builtin import fashion_mnist_available

    return "fashion-mnist" if fashion_mnist_available() else "digits"


def _stratified_first(labels: np.ndarray, per_class: Optional[int]) -> np.ndarray:
    if per_class is None:
        return np.arange(len(labels))
    idx = [np.flatnonzero(labels == k)[:per_class] for k in np.unique(labels)]
    return np.sort(np.concatenate(idx))


def make_demo_data(source: str, out_dir: Path, size: str = "full") -> dict:
    """Write the poisoned training set, its ground truth and the clean/poisoned test sets; return paths."""
    from flare_core.attacks import GroundTruth, poison_dataset, poison_test_set
    from flare_core.data import load_dataset
    from flare_core.data.writers import save_npz

    spec = DEMO_SPECS[source]
    clean = load_dataset(spec["data"], split="train")
    clean = clean.subset(_stratified_first(clean.labels, spec["per_class"]))
    poisoned, truth = poison_dataset(clean, spec["attack"], rate=spec["rate"], target=spec["target"],
                                     mode=spec["mode"], seed=spec["seed"])
    if size == "small":
        keep = _stratified_first(clean.labels, SMALL_PER_CLASS)
        mask = truth.mask(len(clean))
        poisoned = poisoned.subset(keep)
        new_pos = np.flatnonzero(mask[keep])
        orig_pos = keep[new_pos]
        order = np.searchsorted(truth.poisoned_indices, orig_pos)
        truth = GroundTruth(
            poisoned_indices=new_pos, original_labels=np.asarray(truth.original_labels)[order],
            new_labels=np.asarray(truth.new_labels)[order], attack=truth.attack, params=truth.params,
            mode=truth.mode, target=truth.target, rate=float(len(new_pos) / len(keep)), seed=truth.seed,
            n_total=len(keep),
        )
    test = load_dataset(spec["data"], split="test")
    ptest = poison_test_set(test, spec["attack"], target=spec["target"], mode=spec["mode"], seed=spec["seed"],
                            params=truth.params)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"data": out_dir / lab.TRAIN_NPZ, "truth": out_dir / lab.GROUND_TRUTH,
             "test": out_dir / lab.TEST_CLEAN, "ptest": out_dir / lab.TEST_POISONED}
    save_npz(poisoned, paths["data"])
    truth.to_json(paths["truth"])
    save_npz(test, paths["test"])
    save_npz(ptest, paths["ptest"])
    return paths


def train_demo_model(source: str, out_path: Path, progress: Optional[ProgressCallback] = None) -> Path:
    """Train the demo's model with the project's own trainer (how assets/demo was made)."""
    from flare_core.data import load_dataset
    from flare_core.models import save_checkpoint, train_model
    from flare_core.models.preprocessing import Preprocessing

    spec = DEMO_SPECS[source]
    data_dir = cache_dir() / "demo" / source / "full"
    paths = make_demo_data(source, data_dir)
    ds = load_dataset(paths["data"])
    model, history = train_model(ds, arch=spec["arch"], epochs=spec["epochs"], seed=spec["seed"], progress=progress)
    h, w, c = ds.image_shape
    save_checkpoint(model.cpu(), out_path, arch=spec["arch"], num_classes=ds.num_classes, in_channels=c,
                    image_size=(h, w), preprocessing=Preprocessing(), classes=list(ds.classes),
                    extra={"trained_on": f"flare demo {source}", "spec": spec, "history": history})
    return Path(out_path)


def prepare_demo(progress: Optional[ProgressCallback] = None, size: Optional[str] = None,
                 source: Optional[str] = None) -> DemoScenario:
    """Make (or reuse) the demo scenario and return where everything is."""
    progress = ensure_progress(progress)
    source = source or demo_source()
    size = size or os.environ.get("FLARE_DEMO_SIZE", "full")
    spec = DEMO_SPECS[source]
    data_dir = cache_dir() / "demo" / source / size
    progress("demo-data", 0, 1)
    if not all((data_dir / f).exists() for f in (lab.TRAIN_NPZ, lab.GROUND_TRUTH, lab.TEST_CLEAN, lab.TEST_POISONED)):
        make_demo_data(source, data_dir, size=size)
    progress("demo-data", 1, 1)
    model_path = ASSETS / source / "model.pt"
    if not model_path.exists():
        model_path = cache_dir() / "demo" / source / "model.pt"
        if not model_path.exists():
            logger.warning("demo model for %s not shipped; training it once (a minute or two)", source)
            train_demo_model(source, model_path, progress=progress)
    n = spec["per_class"] if size == "full" else SMALL_PER_CLASS
    title = f"Poisoned {'Fashion-MNIST' if source == 'fashion-mnist' else 'digits'} (BadNets {int(spec['rate'] * 100)} %)"
    desc = (f"{'Fashion-MNIST' if source == 'fashion-mnist' else 'scikit-learn digits'} training images"
            f"{f', {n} per class' if n else ''}, of which {int(spec['rate'] * 100)} % carry a BadNets patch and were "
            f"relabelled to class {spec['target']}; a {spec['arch']} model was trained on them by `flare train`.")
    return DemoScenario(source=source, title=title, description=desc, model_path=model_path,
                        data_path=data_dir / lab.TRAIN_NPZ, ground_truth_path=data_dir / lab.GROUND_TRUTH,
                        test_path=data_dir / lab.TEST_CLEAN, poisoned_test_path=data_dir / lab.TEST_POISONED)
