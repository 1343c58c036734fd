"""Grad-CAM for eager, TorchScript and torch.export models."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from flare_core.errors import FlareError
from flare_core.gradcam import METHODS, default_target_layer, gradcam, list_cam_layers, overlay
from flare_core.models.loaded import LoadedModel
from flare_core.models.preprocessing import Preprocessing


def _eager():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


def _models(tmp_path):
    eager = _eager()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(eager), str(tmp_path / "m.ts"))
        scripted = torch.jit.load(str(tmp_path / "m.ts"))
        torch.export.save(torch.export.export(eager, (torch.rand(2, 3, 12, 12),)), str(tmp_path / "m.pt2"))
        program = torch.export.load(str(tmp_path / "m.pt2"))
    return {
        "module": LoadedModel(eager, "module", 4),
        "torchscript": LoadedModel(scripted, "torchscript", 4),
        "export": LoadedModel(program.module(), "export", 4, exported_program=program),
    }


def _images(n=5, size=12):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _hooks(module):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in module.modules()]


def _clean(module):
    return all(h == (0, 0, 0) for h in _hooks(module))


@pytest.mark.parametrize("kind", ["module", "torchscript", "export"])
def test_cams_for_every_format(kind, tmp_path):
    model = _models(tmp_path)[kind]
    images = _images()
    before, hooks = images.copy(), _hooks(model.module)
    cams, preds = gradcam(model, images, target_layer="3")
    assert cams.shape == (5, 12, 12) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0 and cams.max() > 0.5
    with torch.no_grad():
        expected = _eager()(model.preprocessing.to_tensor(images)).argmax(1).numpy()
    np.testing.assert_array_equal(preds, expected)
    np.testing.assert_array_equal(images, before)
    assert _hooks(model.module) == hooks  # export modules carry their own pytree hooks
    cams2, preds2, logits = gradcam(model, images, target_layer="3", return_logits=True)
    with torch.no_grad():
        plain = _eager()(model.preprocessing.to_tensor(images)).numpy()
    np.testing.assert_allclose(logits, plain, rtol=1e-4, atol=1e-5)  # the outputs of a plain forward pass
    np.testing.assert_array_equal(preds2, preds)
    np.testing.assert_allclose(cams2, cams, atol=1e-6)


def test_graph_cams_equal_eager_cams(tmp_path):
    models, images = _models(tmp_path), _images()
    ref, _ = gradcam(models["module"], images, target_layer="3")
    for kind in ("torchscript", "export"):
        cams, _ = gradcam(models[kind], images, target_layer="3")
        np.testing.assert_allclose(cams, ref, atol=1e-4, err_msg=kind)


def test_matches_pytorch_grad_cam_reference():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images = LoadedModel(_eager(), "module", 4), _images()
    cams, _ = gradcam(model, images, target_layer="3", targets=2)
    x = model.preprocessing.to_tensor(images)
    cam = GradCAM(model.module, [model.module[3]])
    try:
        expected = cam(x, [ClassifierOutputTarget(2)] * len(images))
    finally:
        cam.activations_and_grads.release()
    np.testing.assert_allclose(cams, expected, atol=1e-5)


def test_state_restored_after_cam():
    model = LoadedModel(_eager(), "module", 4)
    model.module.train()
    model.module[7].weight.requires_grad_(False)
    gradcam(model, _images(3))
    assert all(m.training for m in model.module.modules())
    assert [p.requires_grad for p in model.module.parameters()] == [True] * 6 + [False, True]
    assert all(p.grad is None for p in model.module.parameters())
    assert _clean(model.module)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_unit_range_maps(method):
    cams, preds = gradcam(LoadedModel(_eager(), "module", 4), _images(2), method=method)
    assert cams.shape == (2, 12, 12) and preds.shape == (2,)
    assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0


def test_cams_at_image_size_when_preprocessing_resizes():
    model = LoadedModel(_eager(), "module", 4, preprocessing=Preprocessing(size=(12, 12)))
    cams, _ = gradcam(model, _images(2, size=20))
    assert cams.shape == (2, 20, 20)


def test_layers_and_default(tmp_path):
    models = _models(tmp_path)
    assert list_cam_layers(models["module"]) == ["0", "1", "2", "3", "4"]
    assert default_target_layer(models["module"]) == "4"
    assert "3" in list_cam_layers(models["export"])
    assert default_target_layer(models["export"]) == default_target_layer(models["torchscript"])


def test_bad_arguments():
    model = LoadedModel(_eager(), "module", 4)
    with pytest.raises(FlareError):
        gradcam(model, _images(2), method="fullgrad")
    with pytest.raises(ValueError, match="Unknown Grad-CAM layer"):
        gradcam(model, _images(2), target_layer="30")
    with pytest.raises(FlareError):
        gradcam(model, _images(2), targets=[1, 2, 3])
    with pytest.raises(FlareError):
        gradcam(model, _images(2).astype(np.float32))


def test_overlay_rgb_and_gray():
    img, cam = _images(1)[0], np.linspace(0, 1, 144, dtype=np.float32).reshape(12, 12)
    out = overlay(img, cam)
    assert out.shape == (12, 12, 3) and out.dtype == np.uint8
    gray = overlay(img[..., :1], cam)
    assert gray.shape == (12, 12, 3)
    assert not np.array_equal(overlay(img, cam), overlay(img, 1 - cam))
