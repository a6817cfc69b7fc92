"""Augmentation of training images from stateless random ops: what an image becomes depends only on the request's
seed, the image's index in its split and the epoch, never on the order, batching or parallelism of the pipeline.

Importing this module imports TensorFlow (worker/training imports it after worker.device.configure_tensorflow).

One word of shared/core/vocab.AUGMENTATIONS, one random draw per image, with the meaning Keras's layers of the same
name give it: flip (horizontal, half the time), rotation (a fraction of a full turn either way), zoom (the image
scaled by 1 +- the fraction, as one factor for both sides), translate (a fraction of the width and height either
way), contrast (each channel's spread about its mean scaled by 1 +- the fraction), brightness (the fraction of the
0..255 range added or taken away). The geometric ones are one affine map per image (fill: reflection, bilinear);
pixels stay in 0..255 (raw, before scaling to the model's input range).

Invariants: image `item` of epoch `epoch` draws from the seed fold_in(fold_in((seed, 0), epoch), item), so two runs
of the same request see the same augmented images in the same order (fitting.train_dataset orders each epoch with
a stateless permutation of the same key), and a resumed run sees from its first epoch what an unbroken run saw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from shared.core.vocab import AUGMENTATIONS, GEOMETRIC_AUGMENTATIONS

DRAWS = {name: i for i, name in enumerate((*AUGMENTATIONS, "translate_y"))}
MAX_PIXEL = 255.0


def item_seed(seed: int, item, epoch):
    """The stateless seed (shape [2]) of one image in one epoch."""
    base = tf.constant([int(seed), 0], dtype=tf.int64)
    by_epoch = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(by_epoch, tf.cast(item, tf.int64))


def epoch_order(seed: int, epoch, n: int):
    """A permutation of range(n), the same for the same (seed, epoch) wherever it is computed."""
    key = tf.stack([tf.constant(int(seed), tf.int64), tf.cast(epoch, tf.int64) + 1])
    return tf.argsort(tf.random.stateless_uniform([n], seed=key))


@dataclass(frozen=True)
class StatelessAugmentation:
    """The augmentations a request asked for (name -> switch or fraction, vocabulary order) and its seed."""
    amounts: dict
    seed: int

    @property
    def names(self) -> list[str]:
        return list(self.amounts)

    def __call__(self, image, item, epoch):
        """One image (H, W, C), 0..255, as float32 augmented for (item, epoch)."""
        image = tf.cast(image, tf.float32)
        draws = tf.random.stateless_uniform([len(DRAWS)], seed=item_seed(self.seed, item, epoch))
        signed = 2.0 * draws - 1.0  # in [-1, 1)
        if any(name in self.amounts for name in GEOMETRIC_AUGMENTATIONS):
            image = self._geometric(image, draws, signed)
        if "contrast" in self.amounts:
            factor = tf.maximum(0.0, 1.0 + signed[DRAWS["contrast"]] * float(self.amounts["contrast"]))
            mean = tf.reduce_mean(image, axis=(0, 1), keepdims=True)
            image = (image - mean) * factor + mean
        if "brightness" in self.amounts:
            image = image + signed[DRAWS["brightness"]] * float(self.amounts["brightness"]) * MAX_PIXEL
        return tf.clip_by_value(image, 0.0, MAX_PIXEL)

    def _amount(self, name: str) -> float:
        return float(self.amounts.get(name, 0.0))

    def _geometric(self, image, draws, signed):
        """One affine map: output pixel p samples the input at c + A (p - c) + t (c: the centre)."""
        shape = tf.shape(image)
        height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        flip = tf.where(draws[DRAWS["flip"]] < 0.5, -1.0, 1.0) if self.amounts.get("flip") else tf.constant(1.0)
        angle = signed[DRAWS["rotation"]] * self._amount("rotation") * 2.0 * math.pi
        zoom = 1.0 + signed[DRAWS["zoom"]] * self._amount("zoom")
        shift_x = signed[DRAWS["translate"]] * self._amount("translate") * width
        shift_y = signed[DRAWS["translate_y"]] * self._amount("translate") * height
        cos, sin = tf.cos(angle) * zoom, tf.sin(angle) * zoom
        a00, a01, a10, a11 = cos * flip, -sin, sin * flip, cos
        cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
        transform = tf.stack([a00, a01, cx - a00 * cx - a01 * cy + shift_x,
                              a10, a11, cy - a10 * cx - a11 * cy + shift_y, 0.0, 0.0])
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None], transforms=transform[None], output_shape=shape[:2], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="REFLECT")[0]
