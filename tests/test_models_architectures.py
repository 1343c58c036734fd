"""Architecture registry: every entry builds and maps (B, C, H, W) to (B, K) logits."""
import pytest
import torch
from torch import nn

from flare_core.errors import FlareError, ModelError
from flare_core.models import ARCHITECTURES, architecture_names, build_model
from flare_core.models.architectures import _replace_first_conv


def _count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("arch", ["small-cnn", "small-cnn-gn", "narrow-resnet", "resnet18-cifar"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_registered_arch_gives_logits(arch, channels, size):
    torch.manual_seed(0)
    model = build_model(arch, 7, channels, size).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_registry_has_the_documented_names():
    assert {"small-cnn", "small-cnn-gn", "narrow-resnet", "resnet18-cifar"} <= set(ARCHITECTURES)
    assert "torchvision:resnet18" in architecture_names(include_torchvision=True)


@pytest.mark.parametrize("arch,n_bn", [("small-cnn", 5), ("small-cnn-gn", 0), ("narrow-resnet", 20),
                                       ("resnet18-cifar", 20)])
def test_batchnorm_layer_counts(arch, n_bn):
    model = build_model(arch, 10, 3, 32)
    assert _count(model, nn.BatchNorm2d) == n_bn


def test_gn_variant_uses_groupnorm():
    assert _count(build_model("small-cnn-gn", 10, 1, 28), nn.GroupNorm) == 5


def test_widths_of_resnets():
    narrow, full = build_model("narrow-resnet", 10, 3, 32), build_model("resnet18-cifar", 10, 3, 32)
    assert narrow.fc.in_features == 128 and full.fc.in_features == 512
    assert full.conv1.kernel_size == (3, 3) and full.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in full.modules())


@pytest.mark.parametrize("channels", [3, 1])
def test_torchvision_model(channels):
    model = build_model("torchvision:resnet18", 5, channels, 32).eval()
    with torch.no_grad():
        assert model(torch.rand(2, channels, 32, 32)).shape == (2, 5)


def test_unknown_torchvision_name():
    with pytest.raises(ModelError, match="resnet18"):
        build_model("torchvision:resnet19", 5, 3, 32)


def test_unknown_arch_suggests_close_name():
    with pytest.raises(ModelError, match="small-cnn"):
        build_model("small-cn", 10, 1, 28)


def test_unknown_arch_is_a_flare_error():
    with pytest.raises(FlareError):
        build_model("no-such-model", 10, 1, 28)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_num_classes(bad):
    with pytest.raises(ModelError):
        build_model("small-cnn", bad, 1, 28)


def test_bad_in_channels():
    with pytest.raises(ModelError):
        build_model("small-cnn", 10, 0, 28)


def test_first_conv_not_replaced_when_it_is_not_rgb():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU())
    assert _replace_first_conv(model, 1) is False
    assert model[0].in_channels == 4


def test_same_seed_same_init():
    torch.manual_seed(3)
    a = build_model("small-cnn", 10, 1, 28)
    torch.manual_seed(3)
    b = build_model("small-cnn", 10, 1, 28)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
