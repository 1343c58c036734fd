"""TorchScript and torch.export models give the same layers and features as their eager original."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from flare_core.dataset import ImageDataset
from flare_core.features import (
    extract_abnormality_features,
    extract_activations,
    extract_latent_features,
    extract_pooled_features,
    list_layers,
)
from flare_core.features.view import model_view
from flare_core.models.loaded import LoadedModel


class ResLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.block(x) + x
        return self.fc(torch.flatten(x.mean(dim=(2, 3)), 1))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = torch.relu(self.gn(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean(dim=(2, 3)))


def _eager(cls):
    torch.manual_seed(0)
    m = cls()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _variants(eager, tmp_path):
    """eager, TorchScript (script -> save -> load) and .pt2 (export -> save -> load) LoadedModels."""
    example = torch.rand(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(eager), str(tmp_path / "m.ts"))
        scripted = torch.jit.load(str(tmp_path / "m.ts"))
        torch.export.save(torch.export.export(eager, (example,)), str(tmp_path / "m.pt2"))
        program = torch.export.load(str(tmp_path / "m.pt2"))
    n = eager.fc.out_features
    return {
        "module": LoadedModel(eager, "module", n),
        "torchscript": LoadedModel(scripted, "torchscript", n),
        "export": LoadedModel(program.module(), "export", n, exported_program=program),
    }


def _dataset(n=7):
    rng = np.random.default_rng(1)
    return ImageDataset(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.zeros(n), ["a"],
                        [str(i) for i in range(n)])


@pytest.mark.parametrize("cls", [ResLike, GroupNormNet])
def test_graph_models_match_eager(cls, tmp_path):
    models, ds = _variants(_eager(cls), tmp_path), _dataset()
    ref_layers = list_layers(models["module"])
    ref = extract_abnormality_features(models["module"], ds, batch_size=3)
    ref_pooled, ref_name = extract_pooled_features(models["module"], ds)
    with torch.no_grad():
        ref_logits = models["module"].module(models["module"].preprocessing.to_tensor(ds.images)).numpy()
    for kind in ("torchscript", "export"):
        assert list_layers(models[kind]) == ref_layers, kind
        got = extract_abnormality_features(models[kind], ds, batch_size=3)  # batch 3 != exported batch 2
        assert got.layer_names == ref.layer_names and got.stats_source == ref.stats_source
        np.testing.assert_allclose(got.values, ref.values, rtol=1e-5, atol=1e-5, err_msg=kind)
        pooled, name = extract_pooled_features(models[kind], ds)
        assert name == ref_name
        np.testing.assert_allclose(pooled, ref_pooled, rtol=1e-5, atol=1e-6, err_msg=kind)
        lat = extract_latent_features(models[kind], ds, batch_size=3)  # logits of padded chunks sliced back
        np.testing.assert_allclose(lat.pooled, ref_pooled, rtol=1e-5, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(lat.logits, ref_logits, rtol=1e-5, atol=1e-5, err_msg=kind)
        both = extract_abnormality_features(models[kind], ds, batch_size=3, latent=True)  # one pass, both inputs
        np.testing.assert_allclose(both.values, ref.values, rtol=1e-5, atol=1e-5, err_msg=kind)
        np.testing.assert_allclose(both.latent.pooled, ref_pooled, rtol=1e-5, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(both.latent.logits, ref_logits, rtol=1e-5, atol=1e-5, err_msg=kind)


def test_graph_activations_equal_eager(tmp_path):
    models = _variants(_eager(ResLike), tmp_path)
    x = torch.rand(5, 3, 8, 8)
    ref = extract_activations(models["module"], x, ["bn", "block.1", "fc:input"])
    for kind in ("torchscript", "export"):
        got = extract_activations(models[kind], x, ["bn", "block.1", "fc:input"])
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], msg=f"{kind} {name}")


def test_user_graph_models_are_not_modified(tmp_path):
    models = _variants(_eager(ResLike), tmp_path)
    gm = models["export"].module
    nodes_before = [str(n) for n in gm.graph.nodes]
    extract_abnormality_features(models["export"], _dataset())
    extract_abnormality_features(models["torchscript"], _dataset())
    assert [str(n) for n in gm.graph.nodes] == nodes_before
    assert not any(name.startswith("_flare") for name, _ in gm.named_modules())
    assert not models["torchscript"].module.training


def test_view_is_built_once_per_model(tmp_path):
    model = _variants(_eager(ResLike), tmp_path)["export"]
    assert model_view(model).module is model_view(model).module


@pytest.mark.parametrize("kind", ["module", "torchscript", "export"])
def test_view_cache_does_not_keep_models_alive(kind, tmp_path):
    import gc
    import weakref

    model = _variants(_eager(ResLike), tmp_path)[kind]
    extract_abnormality_features(model, _dataset())
    ref = weakref.ref(model.module)
    del model
    gc.collect()
    assert ref() is None


def test_unknown_graph_layer_name(tmp_path):
    model = _variants(_eager(ResLike), tmp_path)["export"]
    with pytest.raises(ValueError, match="Unknown layer"):
        extract_activations(model, torch.rand(2, 3, 8, 8), ["bn2"])


def test_torchscript_graph_mode_and_buffers_unchanged(tmp_path):
    model = _variants(_eager(ResLike), tmp_path)["torchscript"]
    script = model.module
    script.train()
    graph_before = str(script.graph)
    buffers_before = {k: v.clone() for k, v in script.state_dict().items()}
    extract_abnormality_features(model, _dataset())
    assert str(script.graph) == graph_before
    assert all(m.training for m in script.modules())
    for k, v in script.state_dict().items():
        torch.testing.assert_close(v, buffers_before[k], rtol=0, atol=0, msg=k)


def test_traced_torchscript_matches_eager(tmp_path):
    eager, ds = _eager(ResLike), _dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(eager, torch.rand(2, 3, 8, 8)), str(tmp_path / "t.ts"))
        traced = torch.jit.load(str(tmp_path / "t.ts"))
    ref = extract_abnormality_features(LoadedModel(eager, "module", 3), ds)
    got = extract_abnormality_features(LoadedModel(traced, "torchscript", 3), ds)
    assert got.layer_names == ref.layer_names
    np.testing.assert_allclose(got.values, ref.values, rtol=1e-5, atol=1e-5)


class FlattenNet(nn.Module):
    """``reshape(x.shape[0], -1)`` bakes the batch size into an export with a static batch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        x = torch.relu(self.gn(self.conv(x)))
        return self.fc(x.reshape(x.shape[0], -1))


def test_export_with_static_batch_runs_in_padded_chunks(tmp_path):
    from flare_core.gradcam import gradcam

    eager = _eager(FlattenNet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(eager, (torch.rand(2, 3, 8, 8),))
    exported = LoadedModel(program.module(), "export", 3, exported_program=program)
    ref_model, ds = LoadedModel(eager, "module", 3), _dataset(n=5)
    assert model_view(exported).fixed_batch == 2
    ref = extract_abnormality_features(ref_model, ds, batch_size=4)  # data statistics: padding must not count
    got = extract_abnormality_features(exported, ds, batch_size=4)
    np.testing.assert_allclose(got.values, ref.values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(extract_pooled_features(exported, ds)[0], extract_pooled_features(ref_model, ds)[0],
                               rtol=1e-5, atol=1e-6)
    x = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(extract_activations(exported, x, ["gn"])["gn"],
                               extract_activations(ref_model, x, ["gn"])["gn"])
    cams, preds = gradcam(exported, ds.images, target_layer="conv")
    ref_cams, ref_preds = gradcam(ref_model, ds.images, target_layer="conv")
    np.testing.assert_array_equal(preds, ref_preds)
    np.testing.assert_allclose(cams, ref_cams, atol=1e-4)
