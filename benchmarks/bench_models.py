"""The three models score_throughput.py compares, and their registration through the public registry.

  demo_vgg   worker.training.architectures.vgg_regressor(60): the demo-size VGG (width 16), ~0.07 GFLOP per image;
  seed_vgg   the same builder at full width, vgg_regressor(60, width=72): ~1.36 GFLOP per image, the size of
             the page-view seed model;
  mobilenet  keras.applications.MobileNetV3Small(weights=None, 224x224, include_top=False, pooling="avg",
             include_preprocessing=False) + Dense(1): ~0.11 GFLOP per image, but many small layers.

Pixel scaling is part of each model's registry Signature (shared.images.imaging.Preprocessing.pixel_scale): the VGGs
take "unit" ([0, 1], as vgg_regressor documents); the MobileNet is built without its own rescaling layer and
takes "symmetric" ([-1, 1], the range its include_preprocessing layer would produce). Every column of the
benchmark scales pixels this way. Weights are random (seeded): nothing is downloaded, and speed does not
depend on them.

FLOPs are counted from the layers (2 x multiply-adds of the convolutions and dense layers; pooling,
activations and normalisation left out).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    key: str
    name: str  # in the imgq registry
    label: str
    input_size: int
    pixel_scale: str
    builder: str  # how it is built, for the report

    def build(self):
        import keras

        if self.key == "demo_vgg":
            from worker.training.architectures import vgg_regressor

            return vgg_regressor(self.input_size)
        if self.key == "seed_vgg":
            from worker.training.architectures import vgg_regressor

            return vgg_regressor(self.input_size, width=72)
        keras.utils.set_random_seed(0)
        size = (self.input_size, self.input_size, 3)
        base = keras.applications.MobileNetV3Small(weights=None, input_shape=size, include_top=False,
                                                   pooling="avg", include_preprocessing=False)
        inputs = keras.Input(size, name="image")
        return keras.Model(inputs, keras.layers.Dense(1, name="output")(base(inputs)), name="mobilenet_v3_small")


MODELS = {
    "demo_vgg": ModelSpec("demo_vgg", "bench-vgg60", "demo VGG (width 16)", 60, "unit", "vgg_regressor(60)"),
    "seed_vgg": ModelSpec("seed_vgg", "bench-vgg60-w72", "seed-size VGG (width 72)", 60, "unit",
                          "vgg_regressor(60, width=72)"),
    "mobilenet": ModelSpec("mobilenet", "bench-mobilenetv3s", "MobileNetV3Small 224", 224, "symmetric",
                           "MobileNetV3Small(weights=None, include_top=False, pooling='avg', "
                           "include_preprocessing=False) + Dense(1)"),
}


def count_flops(model) -> int:
    """FLOPs of one image (2 x multiply-adds of Conv2D, DepthwiseConv2D and Dense layers, nested models too)."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if hasattr(layer, "layers"):
            total += count_flops(layer)
        elif isinstance(layer, layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            _, h, w, c = layer.output.shape
            total += 2 * kh * kw * h * w * c
        elif isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            _, h, w, c = layer.output.shape
            total += 2 * kh * kw * layer.input.shape[-1] * h * w * c // layer.groups
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def build_and_save(spec: ModelSpec, folder: Path):
    """Build the model and save it as a .keras file; returns (keras model, path, description dict)."""
    model = spec.build()
    path = folder / f"{spec.name}.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    info = {"name": spec.name, "label": spec.label, "builder": spec.builder, "input": spec.input_size,
            "pixel_scale": spec.pixel_scale, "gflop_per_image": round(count_flops(model) / 1e9, 3),
            "params": int(model.count_params()), "file_mb": round(path.stat().st_size / 2**20, 1)}
    return model, path, info


def register(spec: ModelSpec, path: Path, targets: list[tuple[str, Path]]) -> list:
    """Import the file as spec.name (promoted to production) into each (database URL, model store) of
    `targets`, as register_model did for one; the file is inspected once (shared.services.model_registry.inspect_file)
    and its shapes passed to every import. Returns the ModelVersion rows (expunged), in `targets` order."""
    from shared.core.db import session_scope
    from shared.services import model_registry as registry

    shapes = registry.inspect_file(path)
    versions = []
    for url, store in targets:
        sig = registry.Signature(task="regression", input_height=spec.input_size, input_width=spec.input_size,
                                 pixel_scale=spec.pixel_scale, output_names=["pageviews"],
                                 target_transform={"kind": "log1p"})
        with session_scope(url) as session:
            version = registry.import_model(session, path, spec.name, sig, store, promote=True, shapes=shapes,
                                            description=f"score_throughput benchmark: untrained {spec.builder}")
            session.flush()
            session.expunge(version)
        versions.append(version)
    return versions
