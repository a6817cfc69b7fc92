"""worker.pixel_scaling: serving and training give a model identical inputs for every pixel scale."""
from __future__ import annotations

import numpy as np
import pytest

from shared.core.vocab import PIXEL_SCALE_MAPS
from shared.images.imaging import Preprocessing, scale_pixels
from worker import pixel_scaling

tf = pytest.importorskip("tensorflow")

SIZE = 8
# every byte value, in every channel, at several positions: 4 images of 8x8x3 = 768 values, each of 0..255 three times
PIXELS = (np.arange(4 * SIZE * SIZE * 3) % 256).astype(np.uint8).reshape(4, SIZE, SIZE, 3)


def identity(x, training=False):
    """A model that returns its input: what a model would see."""
    return x


def served(pixels: np.ndarray, pixel_scale: str) -> np.ndarray:
    """What a worker's model gets for a uint8 batch (load_for_model(scaled=False))."""
    from worker.model_cache import traced_predict

    return traced_predict(tf, identity, Preprocessing(SIZE, SIZE, pixel_scale=pixel_scale))(pixels)


def trained(pixels: np.ndarray, pixel_scale: str) -> np.ndarray:
    """What a model gets from the training pipeline for the same pixels."""
    from worker.training.fitting import make_dataset

    y = np.zeros(len(pixels), np.float32)
    (x, _), = make_dataset(pixels, y, len(pixels), pixel_scale=pixel_scale, seed=0, shuffle=False)
    return np.asarray(x)


@pytest.mark.parametrize("pixel_scale", sorted(PIXEL_SCALE_MAPS))
def test_serving_and_training_give_a_model_identical_tensors(pixel_scale):
    serving, training = served(PIXELS, pixel_scale), trained(PIXELS, pixel_scale)
    assert serving.dtype == training.dtype == np.float32
    assert np.array_equal(serving, training)
    divisor, offset = PIXEL_SCALE_MAPS[pixel_scale]
    assert np.allclose(serving, PIXELS / divisor + offset, rtol=0, atol=1e-6)  # within float32 rounding


@pytest.mark.parametrize("pixel_scale", sorted(PIXEL_SCALE_MAPS))
def test_the_float_path_of_serving_scaled_in_numpy_gives_the_same_tensors(pixel_scale):
    """Pixels decoded and scaled by the decoders (load_for_model(scaled=True)) reach the model bit for bit as the
    uint8 path and training scale them."""
    in_numpy = scale_pixels(PIXELS.astype(np.float32), pixel_scale)
    assert np.array_equal(in_numpy, np.asarray(pixel_scaling.scale_pixels_tf(PIXELS, pixel_scale)))
    from worker.model_cache import traced_predict

    through_float_path = traced_predict(tf, identity, Preprocessing(SIZE, SIZE, pixel_scale=pixel_scale))(in_numpy)
    assert np.array_equal(through_float_path, served(PIXELS, pixel_scale))


def test_serving_and_training_both_scale_through_the_one_function(monkeypatch):
    """Undoing the merge (a private copy in model_cache.py or fitting.py) fails here even while the copies agree."""
    calls = []
    real = pixel_scaling.scale_pixels_tf

    def spy(pixels, pixel_scale):
        calls.append(pixel_scale)
        return real(pixels, pixel_scale)

    monkeypatch.setattr(pixel_scaling, "scale_pixels_tf", spy)
    served(PIXELS, "symmetric")
    assert calls == ["symmetric"]
    trained(PIXELS, "unit")
    assert calls == ["symmetric", "unit"]
