"""Model architectures known by name, shared by the CLI and the dashboard.

Every entry of ``ARCHITECTURES`` is a builder ``(num_classes, in_channels, image_size) -> nn.Module``
returning a freshly initialised classifier that maps (B, in_channels, H, W) float images to (B, num_classes)
logits. Torchvision classifiers are reached as ``'torchvision:<name>'`` (always built with ``weights=None``).
"""
from __future__ import annotations

import difflib
import logging
from typing import Callable, Sequence, Union

import torch
from torch import nn

from flare_core.errors import ModelError

logger = logging.getLogger(__name__)

ImageSize = Union[int, Sequence[int], None]
Builder = Callable[[int, int, ImageSize], nn.Module]

TORCHVISION_PREFIX = "torchvision:"


# --------------------------------------------------------------------------------------------------
# Small CNN (BatchNorm or GroupNorm)
# --------------------------------------------------------------------------------------------------

def _group_norm(channels: int) -> nn.GroupNorm:
    groups = 8 if channels % 8 == 0 else 1
    return nn.GroupNorm(groups, channels)


def _conv_block(cin: int, cout: int, norm: str) -> nn.Sequential:
    norm_layer = nn.BatchNorm2d(cout) if norm == "bn" else _group_norm(cout)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm_layer, nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A VGG-style CNN for 28x28 / 32x32 images: three stages of 3x3 conv-norm-relu blocks, each ending
    in a 2x2 max-pool, then global average pooling and a linear classifier.

    ``widths`` gives the channel count of each stage; the first two stages have two conv blocks,
    the last one a single block (5 normalisation layers in total with the default widths).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64),
                 norm: str = "bn") -> None:
        super().__init__()
        if norm not in ("bn", "gn"):
            raise ValueError(f"norm must be 'bn' or 'gn', got {norm!r}")
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            _conv_block(in_channels, w1, norm), _conv_block(w1, w1, norm), nn.MaxPool2d(2),
            _conv_block(w1, w2, norm), _conv_block(w2, w2, norm), nn.MaxPool2d(2),
            _conv_block(w2, w3, norm), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------------------------------
# CIFAR-style ResNet (He et al. 2016, section 4.2 layout with BasicBlocks and 3x3 stem, no max-pool)
# --------------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stem conv (stride 1, no max-pool), four stages of BasicBlocks
    (the first at stride 1, the others halving the resolution), global average pooling, linear head.

    With ``blocks=(2, 2, 2, 2)`` it has 20 BatchNorm layers, like ResNet-18.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, widths: Sequence[int] = (64, 128, 256, 512),
                 blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError("widths and blocks must each have 4 entries (one per stage)")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        cin = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------------------------------
# Torchvision classifiers
# --------------------------------------------------------------------------------------------------

def _torchvision_names() -> list:
    try:
        import torchvision
        return sorted(torchvision.models.list_models(module=torchvision.models))
    except Exception:  # torchvision missing or broken: no torchvision entries
        return []


def _replace_first_conv(model: nn.Module, in_channels: int) -> bool:
    """Swap the model's first Conv2d (in registration order) for one taking ``in_channels``.

    Returns False (model unchanged) when that conv does not take plain 3-channel input.
    """
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != 3 or module.groups != 1:
                return False
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                            padding=module.padding, dilation=module.dilation, bias=module.bias is not None,
                            padding_mode=module.padding_mode)
            parent_path, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, name, new)
            return True
    return False


def build_torchvision(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A torchvision classifier by name, randomly initialised (``weights=None``, nothing is downloaded)."""
    import torchvision

    names = _torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        hint = f" Close names: {', '.join(TORCHVISION_PREFIX + c for c in close)}." if close else ""
        raise ModelError(f"Unknown torchvision model {name!r}; use 'torchvision:<name>' with a torchvision "
                         f"classifier name such as 'torchvision:resnet18'.{hint}")
    kwargs = {"weights": None, "num_classes": num_classes}
    if name.startswith(("inception", "googlenet")):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    model = torchvision.models.get_model(name, **kwargs)
    if in_channels != 3 and not _replace_first_conv(model, in_channels):
        raise ModelError(f"torchvision:{name} needs 3-channel input; set the preprocessing channels to 3 "
                         f"(grayscale images are then repeated to RGB).")
    return model


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

def _small_cnn(num_classes: int, in_channels: int, image_size: ImageSize = None) -> nn.Module:
    return SmallCNN(num_classes, in_channels, norm="bn")


def _small_cnn_gn(num_classes: int, in_channels: int, image_size: ImageSize = None) -> nn.Module:
    return SmallCNN(num_classes, in_channels, norm="gn")


def _narrow_resnet(num_classes: int, in_channels: int, image_size: ImageSize = None) -> nn.Module:
    return CifarResNet(num_classes, in_channels, widths=(16, 32, 64, 128))


def _resnet18_cifar(num_classes: int, in_channels: int, image_size: ImageSize = None) -> nn.Module:
    return CifarResNet(num_classes, in_channels, widths=(64, 128, 256, 512))


ARCHITECTURES: dict = {
    "small-cnn": _small_cnn,
    "small-cnn-gn": _small_cnn_gn,
    "narrow-resnet": _narrow_resnet,
    "resnet18-cifar": _resnet18_cifar,
}

ARCHITECTURE_HELP: dict = {
    "small-cnn": "small VGG-style CNN with BatchNorm (5 BN layers); fast on CPU, for 28x28/32x32 images",
    "small-cnn-gn": "the same CNN with GroupNorm instead of BatchNorm (no BN statistics to use)",
    "narrow-resnet": "CIFAR ResNet-18 layout (20 BN layers) with widths 16-32-64-128; trains on CPU",
    "resnet18-cifar": "standard CIFAR ResNet-18 (3x3 stem, no max-pool, widths 64-512, 20 BN layers); for GPU",
    "torchvision:<name>": "any torchvision classifier, randomly initialised (e.g. torchvision:resnet18)",
}


def architecture_names(include_torchvision: bool = False) -> list:
    """Registered names (plus every 'torchvision:<name>' when asked)."""
    names = list(ARCHITECTURES)
    if include_torchvision:
        names += [TORCHVISION_PREFIX + n for n in _torchvision_names()]
    return names


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) or value < 1:
        raise ModelError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def build_model(arch: str, num_classes: int, in_channels: int = 3, image_size: ImageSize = None) -> nn.Module:
    """A freshly initialised model of the named architecture giving (B, num_classes) logits.

    ``image_size`` (int or (H, W)) is passed to the builder; the built-in architectures pool globally
    and work for any size of at least 8 pixels.
    """
    num_classes = _check_positive_int("num_classes", num_classes)
    in_channels = _check_positive_int("in_channels", in_channels)
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"The architecture must be a name, one of: {', '.join(ARCHITECTURES)} or torchvision:<name>.")
    if arch.startswith(TORCHVISION_PREFIX):
        return build_torchvision(arch[len(TORCHVISION_PREFIX):], num_classes, in_channels)
    if arch not in ARCHITECTURES:
        close = difflib.get_close_matches(arch, architecture_names(include_torchvision=True), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ModelError(f"Unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)} "
                         f"or torchvision:<name>.{hint}")
    return ARCHITECTURES[arch](num_classes, in_channels, image_size)
