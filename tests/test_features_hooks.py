"""ActivationRecorder / extract_activations: contracts on hooks, modes and names."""
import pytest
import torch
from torch import nn

from flare_core.features import ActivationRecorder, extract_activations


class SmallBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _model():
    torch.manual_seed(0)
    m = SmallBN()
    m.bn.running_mean.normal_()
    m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_recorder_does_not_change_outputs():
    m, x = _model(), torch.randn(3, 3, 8, 8)
    plain = m(x)
    with ActivationRecorder(m, ["bn", "relu", "fc:input"]):
        hooked = m(x)
    torch.testing.assert_close(plain, hooked, rtol=0, atol=0)


def test_bn_records_input_and_linear_input_suffix():
    m, x = _model(), torch.randn(3, 3, 8, 8)
    with torch.no_grad(), ActivationRecorder(m, ["bn", "bn:output", "fc:input"]) as rec:
        m(x)
        conv = m.conv(x)
        expected_out = m.bn(conv)
    torch.testing.assert_close(rec.activations["bn"], conv)
    torch.testing.assert_close(rec.activations["bn:output"], expected_out)
    torch.testing.assert_close(rec.activations["fc:input"], torch.relu(expected_out).mean(dim=(2, 3)))


def test_reduce_keeps_only_reduced_value():
    m, x = _model(), torch.randn(3, 3, 8, 8)
    with torch.no_grad(), ActivationRecorder(m, ["bn"], reduce=lambda name, t: t.amax(dim=(1, 2, 3))) as rec:
        m(x)
    assert rec.activations["bn"].shape == (3,)


@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_and_eval_inside(training):
    m = _model().train(training)
    m.relu.training = not training  # mixed flags must come back per submodule
    flags = {n: mod.training for n, mod in m.named_modules()}
    with ActivationRecorder(m, ["bn"]):
        assert not any(mod.training for mod in m.modules())
        m(torch.randn(2, 3, 8, 8))
    assert {n: mod.training for n, mod in m.named_modules()} == flags


def test_eval_mode_keeps_running_stats():
    m = _model().train()
    before = m.bn.running_mean.clone()
    with ActivationRecorder(m, ["bn"]):
        m(torch.randn(4, 3, 8, 8))
    torch.testing.assert_close(m.bn.running_mean, before, rtol=0, atol=0)


def test_no_hooks_left_after_block_and_after_exception():
    m = _model()
    with ActivationRecorder(m, ["bn", "relu", "fc:input"]):
        assert not _no_hooks(m)
        m(torch.randn(2, 3, 8, 8))
    assert _no_hooks(m)
    with pytest.raises(RuntimeError):
        with ActivationRecorder(m, ["bn", "relu"]):
            raise RuntimeError("boom")
    assert _no_hooks(m)
    assert not m.training


def test_unknown_name_lists_close_valid_names():
    with pytest.raises(ValueError, match="'bn'"):
        ActivationRecorder(_model(), ["bnn"])


def test_extract_activations_names_in_dict_out():
    m, x = _model(), torch.randn(2, 3, 8, 8)
    acts = extract_activations(m, x, ["bn", "relu", "fc:input"])
    assert list(acts) == ["bn", "relu", "fc:input"]
    assert acts["bn"].shape == (2, 4, 8, 8) and acts["fc:input"].shape == (2, 4)
    assert _no_hooks(m)


def test_extract_activations_unknown_name():
    with pytest.raises(ValueError, match="Unknown layer"):
        extract_activations(_model(), torch.randn(2, 3, 8, 8), ["nope"])
