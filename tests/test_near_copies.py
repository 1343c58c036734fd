"""Near-copies of one image in a kept tail group (flare_core.near_copies): measured, never flagged."""
import numpy as np
import pytest

from flare_core.near_copies import NEAR_COPY_RATIO, annotate_tail_groups, near_copy_ratio


def _class_images(rng, n=300, size=12):
    return rng.integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)


def _copies(rng, image, n=30, noise=4.0):
    out = image[None].astype(np.float32) + rng.normal(scale=noise, size=(n,) + image.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_copies_of_one_image_are_near_copies_and_distinct_images_are_not(seed):
    rng = np.random.default_rng(seed)
    images = np.concatenate([_class_images(rng), _copies(rng, _class_images(rng, 1)[0])])
    before = images.copy()
    rows = np.arange(len(images))
    copies = np.arange(300, 330)
    assert near_copy_ratio(images, copies, rows) < NEAR_COPY_RATIO
    distinct = rng.choice(300, 30, replace=False)
    assert near_copy_ratio(images, distinct, rows) > 0.8
    np.testing.assert_array_equal(images, before)


def test_a_shared_trigger_on_distinct_images_is_not_a_near_copy():
    rng = np.random.default_rng(3)
    images = _class_images(rng, 330)
    images[300:, -3:, -3:, 0] = 255  # a 3x3 patch on 30 different images: poison, not copies
    assert near_copy_ratio(images, np.arange(300, 330), np.arange(330)) > 0.7


def test_too_small_groups_or_classes_give_none():
    images = _class_images(np.random.default_rng(4), 10)
    assert near_copy_ratio(images, np.array([0]), np.arange(10)) is None
    assert near_copy_ratio(images, np.arange(9), np.arange(10)) is None


def test_annotate_tail_groups_adds_the_ratio_to_kept_groups_with_a_cluster_id():
    rng = np.random.default_rng(5)
    images = np.concatenate([_class_images(rng), _copies(rng, _class_images(rng, 1)[0])])
    labels = np.zeros(len(images), int)
    clusters = np.zeros(len(images), int)
    clusters[300:] = 7
    evidence = {"latent": {"tail_groups": {"classes": {"0": {"kept": [
        {"size": 30, "cluster": 7}, {"size": 20}]}}}}}
    assert annotate_tail_groups(evidence, clusters, labels, images) == 1
    kept = evidence["latent"]["tail_groups"]["classes"]["0"]["kept"]
    assert kept[0]["near_copy_ratio"] < NEAR_COPY_RATIO and "near_copy_ratio" not in kept[1]
    assert annotate_tail_groups({}, clusters, labels, images) == 0
