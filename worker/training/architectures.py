"""Small Keras model builders: the VGG-style trunk training builds on (worker/training/models.py) and the demo's
page-view regressor (`imgq demo`, tests, benchmarks). Each function imports Keras when called, never at import."""
from __future__ import annotations


def vgg_trunk(x, width: int = 16):
    """The VGG-style feature extractor: three blocks of two 3x3 convolutions and max pooling, then
    global pooling and a dense layer. Layer names are fixed, so weights transfer between models."""
    from keras import layers

    for i, filters in enumerate((width, width * 2, width * 4)):
        for j in (1, 2):  # He initialisation suits ReLU: fewer dead starts when training from scratch
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer="he_normal",
                              name=f"block{i + 1}_conv{j}")(x)
        x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return layers.Dense(width * 4, activation="relu", kernel_initializer="he_normal", name="fc1")(x)


def vgg_regressor(input_size: int = 60, outputs: int = 1, width: int = 16, seed: int = 0):
    """The VGG-style CNN of the page-view regressor (takes pixels scaled to [0, 1])."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    out = layers.Dense(outputs, name="output")(vgg_trunk(inputs, width))
    return keras.Model(inputs, out, name="vgg_regressor")
