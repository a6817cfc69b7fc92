"""worker/training/augmentation.py: an image's augmentation depends only on (seed, item, epoch)."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
from worker.training import augmentation as A  # noqa: E402  (imports TensorFlow)

RNG = np.random.default_rng(0)
IMAGES = (RNG.random((6, 12, 10, 3)) * 255).astype("float32")
EVERY = {"flip": 1.0, "rotation": 0.2, "zoom": 0.2, "contrast": 0.3, "brightness": 0.2, "translate": 0.1}


def augmented(aug, items, epoch, parallel: int):
    ds = tf.data.Dataset.from_tensor_slices(np.array(items, dtype=np.int64))
    ds = ds.map(lambda i: aug(tf.gather(IMAGES, i), i, epoch), num_parallel_calls=parallel)
    return {item: out.numpy() for item, out in zip(items, ds)}


def test_an_image_is_augmented_the_same_whatever_the_order_and_parallelism():
    aug = A.StatelessAugmentation(EVERY, seed=7)
    forward = augmented(aug, [0, 1, 2, 3, 4, 5], 1, parallel=1)
    backward = augmented(aug, [5, 4, 3, 2, 1, 0], 1, parallel=4)
    for item in forward:
        np.testing.assert_array_equal(forward[item], backward[item])


def test_the_epoch_the_item_and_the_seed_each_change_the_draw():
    aug = A.StatelessAugmentation(EVERY, seed=7)
    base = aug(IMAGES[0], 0, 0).numpy()
    assert not np.allclose(base, aug(IMAGES[0], 0, 1).numpy())
    assert not np.allclose(base, aug(IMAGES[0], 1, 0).numpy())
    assert not np.allclose(base, A.StatelessAugmentation(EVERY, seed=8)(IMAGES[0], 0, 0).numpy())
    np.testing.assert_array_equal(base, A.StatelessAugmentation(EVERY, seed=7)(IMAGES[0], 0, 0).numpy())


def test_a_flip_alone_mirrors_the_image_or_leaves_it():
    aug = A.StatelessAugmentation({"flip": 1.0}, seed=0)
    outcomes = set()
    for item in range(12):
        out = aug(IMAGES[1], item, 0).numpy()
        if np.allclose(out, IMAGES[1][:, ::-1], atol=1e-3):
            outcomes.add("mirrored")
        else:
            np.testing.assert_allclose(out, IMAGES[1], atol=1e-3)
            outcomes.add("kept")
    assert outcomes == {"mirrored", "kept"}


def test_brightness_stays_in_the_pixel_range_and_epoch_orders_are_permutations():
    aug = A.StatelessAugmentation({"brightness": 1.0}, seed=0)
    out = np.stack([aug(IMAGES[2], i, 0).numpy() for i in range(8)])
    assert out.min() >= 0 and out.max() <= 255
    order = A.epoch_order(3, 2, 50).numpy()
    assert sorted(order) == list(range(50))
    np.testing.assert_array_equal(order, A.epoch_order(3, 2, 50).numpy())
    assert not np.array_equal(order, A.epoch_order(3, 3, 50).numpy())
