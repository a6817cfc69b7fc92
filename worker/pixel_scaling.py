"""Pixels to a model's input range in TensorFlow: the one function that serving (worker/model_cache.py, a uint8
batch scaled inside the traced predict) and training (worker/training/fitting.py, the tf.data pipeline) both call,
so the two cannot drift apart.

It computes what shared/images/imaging.scale_pixels computes in NumPy for the float path of serving (and training's
holdout evaluation), with the same float32 constants (imaging.pixel_scale_factors: a multiplication, never a
division, which TensorFlow rewrites inside a tf.function only); the results are bit-identical
(tests/unit/worker/test_pixel_scaling.py). TensorFlow is imported when the function is called, never at import.
"""
from __future__ import annotations

from shared.images.imaging import pixel_scale_factors


def scale_pixels_tf(pixels, pixel_scale: str):
    """0..255 pixels (a uint8 or float tensor or array) -> the model's input, a float32 tensor."""
    import tensorflow as tf

    multiplier, offset = pixel_scale_factors(pixel_scale)
    x = tf.cast(pixels, tf.float32)
    if multiplier != 1.0:
        x = x * multiplier
    if offset:
        x = x + offset
    return x
