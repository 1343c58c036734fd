"""Each trigger does what its paper / docstring says, on tiny synthetic images."""
import numpy as np
import pytest
from PIL import Image

from flare_core.attacks import ATTACKS, apply_trigger
from flare_core.attacks import badnets, blended, sig, trojan, wanet
from flare_core.errors import FlareError


def images(shape=(28, 28, 1), n=5, seed=0, value=None):
    if value is not None:
        return np.full((n, *shape), value, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def changed_mask(a, b):
    """(H, W) True where any image/channel differs."""
    return (a != b).any(axis=(0, 3))


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_trigger_returns_new_uint8_batch_and_keeps_input(name, shape):
    x = images(shape)
    x.setflags(write=False)  # a read-only input must work and stay untouched
    before = x.copy()
    y = ATTACKS[name].make_trigger(shape, seed=0)(x)
    assert y.shape == x.shape and y.dtype == np.uint8 and y is not x
    assert np.array_equal(x, before)
    assert np.all((y != x).reshape(len(x), -1).any(axis=1))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_trigger_rejects_other_image_size(name):
    trigger = ATTACKS[name].make_trigger((28, 28, 1), seed=0)
    with pytest.raises(FlareError, match="built for"):
        trigger(images((32, 32, 3)))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_resolved_params_cover_defaults(name):
    spec = ATTACKS[name]
    resolved = spec.resolve_params((32, 32, 3), None)
    assert set(resolved) == set(spec.defaults) == set(spec.param_help)
    assert spec.resolve_params((32, 32, 3), resolved) == resolved  # resolving is idempotent


def test_badnets_default_is_3x3_checkerboard_bottom_right():
    x = images(value=128)
    y = badnets.make_trigger((28, 28, 1))(x)
    changed = changed_mask(x, y)
    assert changed[24:27, 24:27].all() and changed.sum() == 9  # 1 px margin
    patch = y[0, 24:27, 24:27, 0]
    assert np.array_equal(patch, np.array([[255, 0, 255], [0, 255, 0], [255, 0, 255]]))


@pytest.mark.parametrize("position,corner", [("top-left", (1, 1)), ("top-right", (1, 24)),
                                             ("bottom-left", (24, 1)), ([5, 7], (5, 7))])
def test_badnets_positions(position, corner):
    x = images(value=128)
    y = badnets.make_trigger((28, 28, 1), position=position, pattern="white")(x)
    r, c = corner
    assert np.all(y[:, r:r + 3, c:c + 3] == 255) and changed_mask(x, y).sum() == 9


def test_badnets_size_scales_with_image():
    assert badnets.default_size((28, 28, 1)) == 3 == badnets.default_size((32, 32, 3))
    assert badnets.default_size((64, 64, 3)) == 6
    assert badnets.resolve_params((64, 64, 3), {"size": "auto"})["size"] == 6
    assert trojan.resolve_params((64, 64, 3), {"size": None})["size"] == 14


def test_badnets_random_pattern_depends_on_seed():
    x = images((32, 32, 3), value=0)
    a = badnets.make_trigger((32, 32, 3), pattern="random", seed=1)(x)
    b = badnets.make_trigger((32, 32, 3), pattern="random", seed=1)(x)
    c = badnets.make_trigger((32, 32, 3), pattern="random", seed=2)(x)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("params", [{"size": 40}, {"size": 0}, {"position": "middle"}, {"position": [27, 27]},
                                    {"pattern": "stripes"}, {"margin": -1}, {"size": "3"}])
def test_badnets_bad_params(params):
    with pytest.raises(FlareError):
        badnets.make_trigger((28, 28, 1), **params)


def test_trojan_is_a_larger_distinct_glyph():
    x = images(value=128)
    y = trojan.make_trigger((28, 28, 1))(x)
    changed = changed_mask(x, y)
    assert changed[20:27, 20:27].all() and changed.sum() == 49
    assert np.array_equal(y[0, 20:27, 20:27, 0] // 255, trojan.GLYPH)
    assert trojan.glyph_patch(14, 3).shape == (14, 14, 3)


def test_trojan_alpha_blends():
    x = images(value=100)
    y = trojan.make_trigger((28, 28, 1), alpha=0.5)(x)
    assert set(np.unique(y[0, 20:27, 20:27, 0])) == {50, 178}  # round(0.5*100 + 0.5*{0, 255})


def test_blended_formula_and_seed():
    x = images((32, 32, 3))
    trig = blended.make_trigger((32, 32, 3), seed=4)
    expected = np.clip(np.rint(0.9 * x.astype(np.float64) + 0.1 * trig.pattern), 0, 255)
    assert np.abs(trig(x).astype(int) - expected).max() <= 1  # float32 rounding
    assert not np.array_equal(trig.pattern, blended.make_trigger((32, 32, 3), seed=5).pattern)


def test_blended_user_image_is_resized_and_not_modified(tmp_path):
    path = tmp_path / "kitty.png"
    Image.fromarray(np.full((10, 20, 3), 200, dtype=np.uint8)).save(path)
    before = path.read_bytes()
    trig = blended.make_trigger((28, 28, 1), image=str(path), alpha=0.5)
    assert trig.pattern.shape == (28, 28, 1) and np.all(trig.pattern == 200)
    assert np.all(trig(images(value=0)) == 100)
    assert path.read_bytes() == before


@pytest.mark.parametrize("params", [{"alpha": 0}, {"alpha": 1.5}, {"image": "/no/such/file.png"}])
def test_blended_bad_params(params):
    with pytest.raises(FlareError):
        blended.make_trigger((28, 28, 1), **params)


def test_blended_unreadable_image(tmp_path):
    path = tmp_path / "not_an_image.png"
    path.write_text("hello")
    with pytest.raises(FlareError, match="could not be read"):
        blended.make_trigger((28, 28, 1), image=str(path))


def test_sig_adds_horizontal_sinusoid():
    x = images((32, 32, 3), value=100)
    y = sig.make_trigger((32, 32, 3))(x)
    j = np.arange(32)
    expected = np.rint(100 + 20 * np.sin(2 * np.pi * j * 6 / 32))
    assert np.array_equal(y[0, 0, :, 0], expected)
    assert np.all(y == y[:, :1, :, :1])  # the same for every row, channel and image


def test_sig_clips():
    y = sig.make_trigger((28, 28, 1), delta=100)(images(value=250))
    assert y.max() == 255 and y.min() < 250


def test_wanet_is_a_small_smooth_warp_fixed_by_seed():
    x = images((32, 32, 3))
    a = wanet.make_trigger((32, 32, 3), seed=1)
    assert np.array_equal(a(x), wanet.make_trigger((32, 32, 3), seed=1)(x))
    assert not np.array_equal(a.grid, wanet.make_trigger((32, 32, 3), seed=2).grid)
    h = 32
    ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, h), indexing="ij")
    shift_px = np.abs(a.grid - np.stack([xs, ys], -1)) * (h - 1) / 2
    assert 0 < shift_px.max() < 2  # s=0.5: well under two pixels everywhere
    assert np.all(np.abs(a.grid) <= 1)


def test_wanet_constant_image_is_unchanged_inside():
    # bilinear resampling of a constant image stays constant (grid clamped inside the image)
    x = images((28, 28, 1), value=77)
    assert np.all(wanet.make_trigger((28, 28, 1), seed=0)(x) == 77)


def test_wanet_tiny_strength_is_identity():
    x = images((28, 28, 1))
    assert np.array_equal(wanet.make_trigger((28, 28, 1), s=1e-9)(x), x)


def test_wanet_cross_mode_differs_from_trigger():
    x = images((28, 28, 1))
    trig = wanet.make_trigger((28, 28, 1), seed=0)
    crossed = trig.cross(x, seed=0)
    assert not np.array_equal(crossed, trig(x)) and np.array_equal(crossed, trig.cross(x, seed=0))


@pytest.mark.parametrize("params", [{"k": 1}, {"k": 40}, {"s": 0}, {"cross_ratio": -1}, {"grid_rescale": 3}])
def test_wanet_bad_params(params):
    with pytest.raises(FlareError):
        wanet.make_trigger((28, 28, 1), **params)


def test_apply_trigger_preview():
    x = images()
    assert np.array_equal(apply_trigger(x, "badnets"), badnets.make_trigger((28, 28, 1))(x))
    with pytest.raises(FlareError, match="Unknown attack"):
        apply_trigger(x, "nope")


def test_registry_flags():
    assert set(ATTACKS) == {"badnets", "blended", "trojan", "wanet", "sig"}
    assert [n for n, s in ATTACKS.items() if s.clean_label] == ["sig"]
    assert ATTACKS["sig"].modes == ("all-to-one",)
    assert [n for n, s in ATTACKS.items() if s.supports_cross] == ["wanet"]
