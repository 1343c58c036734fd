"""Retraining on the purified set (flare_core.retrain) on a tiny synthetic run: shapes, metric ranges, files
written atomically into the run folder, the source data untouched, readable errors."""
import json

import numpy as np
import pytest
import torch

from flare_core import retrain
from flare_core.data.writers import save_npz
from flare_core.dataset import ImageDataset
from flare_core.errors import FlareError
from flare_core.models import build_model
from flare_core.models.loaded import LoadedModel
from test_app_support import make_dataset, make_images, make_run


def _lab(tmp_path):
    """A run whose data path sits in a lab folder holding test_clean.npz / test_poisoned.npz (as `flare attack`
    writes them), the matching training set and a small-cnn "analysed model"."""
    lab = tmp_path / "lab"
    lab.mkdir()
    run = make_run(tmp_path / "run", data_path=str(lab / "train.npz"))
    ds = make_dataset(run)
    test = ImageDataset(make_images(30, seed=1), np.arange(30) % 3, run.classes, [f"t#{i}" for i in range(30)])
    ptest = ImageDataset(make_images(20, seed=2), np.zeros(20, dtype=np.int64), run.classes,
                         [f"p#{i}" for i in range(20)])
    save_npz(test, lab / "test_clean.npz")
    save_npz(ptest, lab / "test_poisoned.npz")
    torch.manual_seed(0)
    model = LoadedModel(module=build_model("small-cnn", 3, 1, (8, 8)).eval(), kind="state_dict", num_classes=3,
                        arch="small-cnn", path="m.pt",
                        description={"arch": "small-cnn", "history": {"config": {
                            "epochs": 7, "batch_size": 16, "lr": 0.01, "optimizer": "adam", "schedule": "cosine",
                            "augment": {"crop_padding": 2, "flip": False}, "seed": 3}}})
    return run, ds, model, lab


def test_retrain_purified_measures_before_after_and_stores_the_result(tmp_path):
    run, ds, model, lab = _lab(tmp_path)
    run.set_decisions([0], "remove")  # the detector's miss, removed by the analyst
    run.set_decisions([59], "keep")  # the false alarm, kept
    images_before, labels_before = ds.images.copy(), ds.labels.copy()
    stages = []
    res = retrain.retrain_purified(run, ds, model, epochs=1, num_threads=1,
                                   progress=lambda s, d, t: stages.append(s))
    # the source data is untouched
    assert np.array_equal(ds.images, images_before) and np.array_equal(ds.labels, labels_before)
    # the purified set: 9 flagged - 1 kept + 1 removed = 9 removed of 60
    assert res["n_train_before"] == 60 and res["n_removed"] == 9 and res["n_train_after"] == 51
    assert res["poisoned_left"] == 0  # every ground-truth poisoned sample is removed (0 and the flags; 59 is clean)
    assert res["n_test"] == 30 and res["n_poisoned_test"] == 20
    assert res["test_data"] == str(lab / "test_clean.npz")
    for side in ("before", "after"):
        assert 0.0 <= res[side]["benign_accuracy"] <= 1.0
        assert 0.0 <= res[side]["attack_success_rate"] <= 1.0
    # the recorded recipe is reused (epochs overridden), on the same architecture
    assert res["arch"] == "small-cnn"
    assert res["recipe"]["epochs"] == 1 and res["recipe"]["optimizer"] == "adam" and res["recipe"]["seed"] == 3
    assert res["recipe"]["batch_size"] == 16 and res["recipe"]["n_train"] == 51
    assert len(res["train_loss"]) == 1
    assert {"retrain-before", "train", "retrain-after"} <= set(stages)
    # stored in the run folder: the result and a loadable retrained model
    stored = json.loads((run.path / retrain.RESULT_FILE).read_text())
    assert stored["after"] == res["after"] and retrain.load_result(run) == stored
    assert retrain.is_current(stored, run)
    assert not list(run.path.glob(".*"))  # no temporary files left behind
    from flare_core.models import load_model

    again = load_model(run.path / retrain.MODEL_FILE)
    assert again.arch == "small-cnn" and again.num_classes == 3
    # a later decision makes the stored result stale
    run.set_decisions([5], "remove")
    assert not retrain.is_current(retrain.load_result(run), run)


def test_retrain_is_deterministic_and_save_false_writes_nothing(tmp_path):
    run, ds, model, _ = _lab(tmp_path)
    a = retrain.retrain_purified(run, ds, model, epochs=1, num_threads=1, save=False)
    stages = []
    b = retrain.retrain_purified(run, ds, model, epochs=1, num_threads=1, save=False, control=True,
                                 progress=lambda s, d, t: stages.append(s))
    assert a["after"] == b["after"] and a["train_loss"] == b["train_loss"]
    assert a["control"] is None
    # the control: the same recipe on the whole set (nothing removed)
    assert b["control"]["n_train"] == 60 and 0.0 <= b["control"]["benign_accuracy"] <= 1.0
    assert {"train-control", "retrain-control"} <= set(stages)
    assert not (run.path / retrain.RESULT_FILE).exists() and not (run.path / retrain.MODEL_FILE).exists()


def test_find_test_sets_and_recipe(tmp_path):
    run, _, model, lab = _lab(tmp_path)
    assert retrain.find_test_sets(run) == (lab / "test_clean.npz", lab / "test_poisoned.npz")
    assert retrain.recorded_recipe(model)["augment"] == "crop"
    other = make_run(tmp_path / "other", data_path=str(tmp_path / "nowhere" / "train.npz"))
    assert retrain.find_test_sets(other) == (None, None)
    bare = LoadedModel(module=torch.nn.Linear(2, 2), kind="torchscript", num_classes=2)
    assert retrain.recorded_recipe(bare) == {} and retrain.model_arch(bare) is None


def test_retrain_errors_are_readable(tmp_path):
    run, ds, model, lab = _lab(tmp_path)
    with pytest.raises(FlareError, match="analysed 60"):
        retrain.retrain_purified(run, ds.subset(range(10)), model)
    script = LoadedModel(module=model.module, kind="torchscript", num_classes=3)
    with pytest.raises(FlareError, match="does not name its architecture"):
        retrain.retrain_purified(run, ds, script)
    (lab / "test_clean.npz").unlink()
    with pytest.raises(FlareError, match="needs a clean test set"):
        retrain.retrain_purified(run, ds, model)
    wrong = ImageDataset(make_images(4, size=10), np.zeros(4, dtype=np.int64), run.classes, ["w"] * 4)
    save_npz(wrong, tmp_path / "wrong.npz")
    with pytest.raises(FlareError, match="10x10x1 images"):
        retrain.retrain_purified(run, ds, model, test_data=tmp_path / "wrong.npz")
    ok = ImageDataset(make_images(4), np.zeros(4, dtype=np.int64), run.classes, ["o"] * 4)
    run.set_decisions(range(60), "remove")
    with pytest.raises(FlareError, match="nothing to retrain"):
        retrain.retrain_purified(run, ds, model, test_data=ok)
