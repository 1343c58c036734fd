"""The abnormality statistic and the per-channel moment accumulator against direct numpy computations."""
import numpy as np
import pytest
import torch

from flare_core.features import ChannelMoments, abnormality


def _numpy_abnormality(act, mean, var, eps):
    shape = (1, -1) + (1,) * (act.ndim - 2)
    v = var.astype(np.float64).reshape(shape) + eps
    z2 = (act.astype(np.float64) - mean.astype(np.float64).reshape(shape)) ** 2 / v
    logpdf = -0.5 * z2 - 0.5 * np.log(2 * np.pi * v)
    return logpdf.reshape(len(act), -1).min(axis=1)


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 7), (5, 3, 4, 6)])
def test_matches_direct_numpy(rng, shape):
    act = rng.normal(size=shape).astype(np.float32) * 2 + 0.5
    mean = rng.normal(size=shape[1]).astype(np.float32)
    var = rng.uniform(0.1, 3.0, size=shape[1]).astype(np.float32)
    got = abnormality(torch.from_numpy(act), torch.from_numpy(mean), torch.from_numpy(var), eps=1e-3)
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got.numpy(), _numpy_abnormality(act, mean, var, 1e-3), rtol=1e-5, atol=1e-5)


def test_channel_last_equals_moved_channels(rng):
    act = torch.from_numpy(rng.normal(size=(4, 5, 6)).astype(np.float32))
    mean, var = torch.zeros(6), torch.ones(6)
    torch.testing.assert_close(abnormality(act, mean, var, channel_dim=-1),
                               abnormality(act.movedim(-1, 1), mean, var, channel_dim=1))


def test_planted_extreme_activation_scores_lowest(rng):
    act = rng.normal(size=(8, 4, 5, 5)).astype(np.float32)
    act[5, 2, 3, 1] = 9.0
    scores = abnormality(torch.from_numpy(act), torch.zeros(4), torch.ones(4))
    assert int(scores.argmin()) == 5


def test_input_unchanged(rng):
    act = torch.from_numpy(rng.normal(size=(3, 2, 4)).astype(np.float32))
    before = act.clone()
    abnormality(act, torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(act, before, rtol=0, atol=0)


def test_channel_mismatch_raises():
    with pytest.raises(ValueError):
        abnormality(torch.zeros(2, 3, 4), torch.zeros(2), torch.ones(2))


def test_zero_variance_channel_is_finite():
    scores = abnormality(torch.ones(2, 2, 3), torch.ones(2), torch.zeros(2))
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("channel_dim", [1, -1])
def test_chunked_moments_equal_full(rng, channel_dim):
    data = rng.normal(loc=3.0, scale=2.0, size=(23, 4, 3, 5)).astype(np.float32)
    if channel_dim == -1:
        data = np.moveaxis(data, 1, -1).copy()
    acc = ChannelMoments(channel_dim)
    for start in (0, 5, 6, 17):
        stop = {0: 5, 5: 6, 6: 17, 17: 23}[start]
        acc.update(torch.from_numpy(data[start:stop]))
    per_channel = np.moveaxis(data, channel_dim, 0).reshape(4, -1).astype(np.float64)
    mean, var = acc.result()
    np.testing.assert_allclose(mean.numpy(), per_channel.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(var.numpy(), per_channel.var(axis=1), rtol=1e-4)


def test_moments_without_data_raise():
    with pytest.raises(ValueError):
        ChannelMoments().result()
