"""Model building blocks for training: architectures, heads, freezing, optimizers, schedules, augmentation.

Plain functions (no Celery, no database); importing this module imports Keras / TensorFlow.

Pixel scale
-----------
Every model built here takes its images in the pixel scale passed to :func:`build_model`
(``pixel_scale``, default ``"raw"``, i.e. 0..255 as the model signature's ``raw``), and converts
them *inside the model* to what its backbone expects, with one frozen layer named ``preprocess``:

=====================  ==========================================  ======================================
architecture           the backbone expects                         done by
=====================  ==========================================  ======================================
vgg                    [0, 1]                                       ``preprocess`` (Rescaling)
mobilenet_v3_small     0..255 (its own Rescaling to [-1, 1])        the application itself
mobilenet_v3_large     0..255 (its own Rescaling to [-1, 1])        the application itself
efficientnet_b0        0..255 (its own Rescaling + Normalization)   the application itself
resnet50               "caffe": BGR, 0..255 minus ImageNet mean     ``preprocess`` (frozen Dense 3->3)
xception               [-1, 1]                                      ``preprocess`` (Rescaling)
=====================  ==========================================  ======================================

So one convention holds for all architectures: a new version is registered with the
``pixel_scale`` it was built with, and :func:`recommended_pixel_scale` returns ``"raw"`` for all
of them (no extra arithmetic for MobileNetV3 / EfficientNet, whose preprocessing is built in).
Only standard layers are used (no ``Lambda``), so the saved ``.keras`` files load with
``safe_mode`` on. A model fine-tuned through :func:`head_for_existing` keeps the pixel scale of
the version it came from. Note for EfficientNet: its internal ``Normalization`` layer is part of
the backbone's weights (identity when trained from scratch).

Model layout
------------
``image`` (Input) -> ``preprocess`` (optional) -> ``backbone`` (a nested ``keras.Model``)
-> ``head_dropout`` (Dropout) -> ``output`` (Dense, float32). Freezing addresses the nested
``backbone``; for flat models (e.g. :func:`worker.training.architectures.vgg_regressor` files given to
:func:`head_for_existing`) the backbone is every layer that is not the input, ``preprocess*`` or the
head (the output layer and the Dropout feeding it).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from shared.core.vocab import (
    ARCHITECTURES,
    AUGMENTATIONS,
    FIT_METRICS,
    GEOMETRIC_AUGMENTATIONS,
    LR_SCHEDULES,
    OPTIMIZERS,
    PIXEL_SCALE_MAPS,
    PIXEL_SCALES,
    TRAINABLE_TASKS,
)
from shared.schemas.training import Augmentation
from worker.training.architectures import vgg_trunk

# smallest input side each architecture accepts (VGG: three 2x2 poolings)
MIN_INPUT_SIZE = {"vgg": 8, "mobilenet_v3_small": 32, "mobilenet_v3_large": 32, "efficientnet_b0": 32,
                  "resnet50": 32, "xception": 71}
HEAD_ACTIVATION = {"regression": "linear", "classification": "softmax", "keypoints": "sigmoid"}
BACKBONE_NAME = "backbone"
PREPROCESS_NAME = "preprocess"
HEAD_DROPOUT_NAME = "head_dropout"
OUTPUT_NAME = "output"

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# what each backbone wants, as an affine map of raw 0..255 pixels: (scale, offset); "caffe" is special
_BACKBONE_INPUT = {"vgg": (1 / 255.0, 0.0), "mobilenet_v3_small": (1.0, 0.0), "mobilenet_v3_large": (1.0, 0.0),
                   "efficientnet_b0": (1.0, 0.0), "resnet50": "caffe", "xception": (1 / 127.5, -1.0)}
# raw = scale * x + offset, for x in each pixel scale: the inverse of shared.core.vocab.PIXEL_SCALE_MAPS
_TO_RAW = {name: (divisor, 0.0 - offset * divisor) for name, (divisor, offset) in PIXEL_SCALE_MAPS.items()}


def _choice(kind: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(allowed)}")
    return value


@dataclass
class HeadSpec:
    task: str            # "regression" | "classification" | "keypoints"
    outputs: int         # regression: number of targets; classification: number of classes; keypoints: 2*N
    dropout: float = 0.2

    def validated(self) -> HeadSpec:
        _choice("task", self.task, TRAINABLE_TASKS)
        if isinstance(self.outputs, bool) or not isinstance(self.outputs, (int, np.integer)) or self.outputs < 1:
            raise ValueError(f"head outputs must be a positive integer, got {self.outputs!r}")
        if self.task == "classification" and self.outputs < 2:
            raise ValueError("a classification head needs at least 2 classes (softmax over the classes)")
        if self.task == "keypoints" and self.outputs % 2:
            raise ValueError(f"a keypoint head needs an even number of outputs (x, y per point), got {self.outputs}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {self.dropout!r}")
        return self

    @property
    def activation(self) -> str:
        return HEAD_ACTIVATION[self.task]


def recommended_pixel_scale(architecture: str) -> str:
    """The pixel scale to register a model built by :func:`build_model` with: "raw" for every architecture.

    (Any scale works if passed to ``build_model(pixel_scale=...)``: the in-model ``preprocess`` layer adapts.)
    """
    _choice("architecture", architecture, ARCHITECTURES)
    return "raw"


# ---------------------------------------------------------------------------------------------- building

def _input_hw(architecture: str, input_size) -> tuple[int, int]:
    if isinstance(input_size, (int, np.integer)) and not isinstance(input_size, bool):
        input_size = (int(input_size), int(input_size))
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (height, width), got {input_size!r}") from None
    low = MIN_INPUT_SIZE[architecture]
    if h < low or w < low:
        raise ValueError(f"{architecture} needs an input of at least {low}x{low} pixels, got {h}x{w}")
    return h, w


def _vgg_backbone(h: int, w: int, width: int) -> keras.Model:
    """The trunk of worker.training.architectures.vgg_regressor (same layer names, so its files transfer)."""
    inputs = keras.Input((h, w, 3), name="backbone_input")
    return keras.Model(inputs, vgg_trunk(inputs, width), name=BACKBONE_NAME)


def _application_backbone(architecture: str, h: int, w: int) -> keras.Model:
    from keras import applications as apps

    builder = {"mobilenet_v3_small": apps.MobileNetV3Small, "mobilenet_v3_large": apps.MobileNetV3Large,
               "efficientnet_b0": apps.EfficientNetB0, "resnet50": apps.ResNet50,
               "xception": apps.Xception}[architecture]
    return builder(include_top=False, weights=None, input_shape=(h, w, 3), pooling="avg", name=BACKBONE_NAME)


def _preprocess_layer(architecture: str, pixel_scale: str):
    """The frozen layer mapping `pixel_scale` input to what the backbone expects (None when identity)."""
    a, b = _TO_RAW[pixel_scale]
    want = _BACKBONE_INPUT[architecture]
    if want == "caffe":
        kernel = np.zeros((3, 3), dtype="float32")
        for out_c in range(3):  # BGR output channel c takes RGB input channel 2 - c
            kernel[2 - out_c, out_c] = a
        bias = np.array([b - m for m in _CAFFE_MEAN_BGR], dtype="float32")
        layer = layers.Dense(3, use_bias=True, name=PREPROCESS_NAME, trainable=False,
                             kernel_initializer=keras.initializers.Constant(kernel),
                             bias_initializer=keras.initializers.Constant(bias))
        return layer
    scale, offset = want
    scale, offset = a * scale, b * scale + offset
    if math.isclose(scale, 1.0) and math.isclose(offset, 0.0, abs_tol=1e-12):
        return None
    return layers.Rescaling(scale, offset, name=PREPROCESS_NAME)


def _add_head(features, head: HeadSpec, taken: set[str] = frozenset()):
    def unique(name):
        n, i = name, 1
        while n in taken:
            n, i = f"{name}_{i}", i + 1
        return n
    x = layers.Dropout(head.dropout, name=unique(HEAD_DROPOUT_NAME))(features)
    return layers.Dense(head.outputs, activation=head.activation, dtype="float32", name=unique(OUTPUT_NAME))(x)


def build_model(architecture: str, input_size: tuple[int, int], head: HeadSpec, *, backbone_weights: str | None = None,
                width: int = 16, seed: int = 0, pixel_scale: str = "raw") -> keras.Model:
    """A new model: input in `pixel_scale` -> [preprocess] -> backbone (nested model) -> Dropout -> Dense "output".

    `width` is the VGG filter width (ignored by the other architectures). `backbone_weights` is a local file
    loaded into the backbone (see :func:`load_backbone_weights`); nothing is ever downloaded.
    """
    _choice("architecture", architecture, ARCHITECTURES)
    _choice("pixel_scale", pixel_scale, PIXEL_SCALES)
    head = head.validated()
    h, w = _input_hw(architecture, input_size)
    if architecture == "vgg" and (isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1):
        raise ValueError(f"width must be a positive integer, got {width!r}")
    keras.utils.set_random_seed(int(seed))
    backbone = _vgg_backbone(h, w, int(width)) if architecture == "vgg" else _application_backbone(architecture, h, w)
    if backbone_weights is not None:
        load_backbone_weights(backbone, backbone_weights)
    inputs = keras.Input((h, w, 3), name="image")
    x = inputs
    prep = _preprocess_layer(architecture, pixel_scale)
    if prep is not None:
        x = prep(x)
    out = _add_head(backbone(x), head)
    return keras.Model(inputs, out, name=f"{architecture}_{head.task}")


# ------------------------------------------------------------------------------------- backbone weights

def _weighted(container) -> list:
    return [layer for layer in container.layers if layer.weights]


def _shapes(layer) -> list[tuple]:
    return [tuple(v.shape) for v in layer.weights]


def _flat_layers(model) -> list:
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and isinstance(layer, keras.Model):
            out.extend(_flat_layers(layer))
        else:
            out.append(layer)
    return out


def _match_by_position(target: list, source: list) -> str | None:
    """None when `source` starts with layers of the same classes and weight shapes as `target`."""
    if len(source) < len(target):
        return f"the source has {len(source)} layers with weights, the backbone {len(target)}"
    for t, s in zip(target, source):
        if type(t) is not type(s) or _shapes(t) != _shapes(s):
            return (f"backbone layer {t.name!r} ({type(t).__name__} {_shapes(t)}) does not match "
                    f"{s.name!r} ({type(s).__name__} {_shapes(s)})")
    return None


def _match_by_name(target: list, source_layers: list) -> str | None:
    by_name = {layer.name: layer for layer in source_layers}
    for t in target:
        s = by_name.get(t.name)
        if s is None:
            return f"no layer named {t.name!r} in the source"
        if _shapes(t) != _shapes(s):
            return f"layer {t.name!r} has weights {_shapes(s)} in the source, the backbone needs {_shapes(t)}"
    return None


def _load_from_keras_file(backbone: keras.Model, path: str) -> None:
    from shared.models.model_inspect import load_keras_safely

    source = load_keras_safely(path)  # ValueError with a clear message on failure
    target = _weighted(backbone)
    candidates = []
    try:
        nested = source.get_layer(BACKBONE_NAME)
    except ValueError:
        nested = None
    if isinstance(nested, keras.Model):
        candidates.append(nested)
    candidates.append(source)
    reasons = []
    for cand in candidates:  # same builder: layers in the same order (names of unnamed layers may differ)
        why = _match_by_position(target, _weighted(cand))
        if why is None:
            for t, s in zip(target, _weighted(cand)):
                t.set_weights(s.get_weights())
            return
        reasons.append(why)
    flat = [layer for layer in _flat_layers(source) if layer.weights]
    why = _match_by_name(target, flat)
    if why is None:
        by_name = {layer.name: layer for layer in flat}
        for t in target:
            t.set_weights(by_name[t.name].get_weights())
        return
    raise ValueError(f"the weights in {path} do not fit the {backbone.name!r} backbone: {why} "
                     f"(by position: {reasons[0]})")


def _h5_arrays(path: str) -> list[np.ndarray]:
    import h5py

    arrays = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.append(np.asarray(obj)) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def _signature(arrays) -> list:
    return sorted((tuple(np.shape(a)), hash(np.ascontiguousarray(a).tobytes())) for a in arrays)


def _load_from_weights_h5(backbone: keras.Model, path: str) -> None:
    """A Keras 3 `.weights.h5` of a backbone of the same architecture, checked strictly.

    Keras matches these files by position and may skip silently; so the file must hold exactly as many
    arrays of the same shapes as the backbone, and after loading the backbone must hold exactly them.
    """
    try:
        stored = _h5_arrays(path)
    except OSError as exc:
        raise ValueError(f"cannot read the weights file {path}: {exc}") from None
    mine = [np.asarray(v) for v in backbone.get_weights()]
    if sorted(tuple(a.shape) for a in stored) != sorted(tuple(a.shape) for a in mine):
        raise ValueError(
            f"the weights in {path} do not fit the {backbone.name!r} backbone: the file holds {len(stored)} arrays, "
            f"the backbone has {len(mine)} variables (or their shapes differ); a .weights.h5 must hold the "
            "backbone alone (see save_backbone_weights), a full model's weights need its .keras file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            backbone.load_weights(path)
        except Exception as exc:  # noqa: BLE001 - every Keras failure becomes one clear error
            raise ValueError(f"the weights in {path} do not fit the {backbone.name!r} backbone: "
                             f"{str(exc).splitlines()[0][:300]}") from None
    skipped = [str(w.message) for w in caught if "skip" in str(w.message).lower()]
    if skipped or _signature(backbone.get_weights()) != _signature(stored):
        raise ValueError(f"the weights in {path} do not fit the {backbone.name!r} backbone: "
                         f"{(skipped or ['not every variable was loaded'])[0][:300]}")


def load_backbone_weights(backbone: keras.Model, path: str) -> None:
    """Load a local file into `backbone` (the nested backbone model); ValueError if missing or not matching.

    Accepted files:

    * ``.weights.h5`` - the backbone's own weights (:func:`save_backbone_weights`), same architecture and width;
    * ``.keras`` - a full model (loaded with ``safe_mode``) holding the same backbone: a model built here, a
      ``vgg_regressor`` file for "vgg", a saved ``keras.applications`` model (with or without its top). Layers
      are matched by position (same builder), else by layer name;
    * ``.h5`` / ``.hdf5`` - a legacy Keras weights file of the backbone alone, e.g. the ``..._notop.h5``
      ImageNet files of ``keras.applications`` fetched beforehand (loaded in layer order, strictly).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"backbone weights file not found: {path}")
    if path.endswith(".weights.h5"):
        _load_from_weights_h5(backbone, path)
    elif path.endswith(".keras"):
        _load_from_keras_file(backbone, path)
    elif path.endswith((".h5", ".hdf5")):
        try:
            backbone.load_weights(path)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"the weights in {path} do not fit the {backbone.name!r} backbone: "
                             f"{str(exc).splitlines()[0][:300]}") from None
    else:
        raise ValueError(f"backbone weights must be a .weights.h5, .keras or legacy .h5 file, got {path}")


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The nested backbone model, or None for a flat model."""
    for layer in model.layers:
        if layer.name == BACKBONE_NAME and isinstance(layer, keras.Model):
            return layer
    return None


def save_backbone_weights(model: keras.Model, path: str) -> None:
    """Write the nested backbone's weights to `path` (must end in .weights.h5), for `backbone_weights=`."""
    backbone = backbone_of(model)
    if backbone is None:
        raise ValueError("the model has no nested 'backbone'; save the whole model as .keras instead")
    backbone.save_weights(os.fspath(path))


# ------------------------------------------------------------------------------------- heads, freezing

def _output_layer(model: keras.Model):
    if len(model.outputs) != 1:
        raise ValueError(f"expected a model with one output, got {len(model.outputs)}")
    history = getattr(model.outputs[0], "_keras_history", None)
    if history is None:
        raise ValueError("cannot find the output layer of the model")
    return history[0] if isinstance(history, tuple) else history.operation


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    return history[0] if isinstance(history, tuple) else history.operation


def _head_layers(model: keras.Model) -> list:
    """The output layer and the Dropout layers feeding it (in model order)."""
    out = _output_layer(model)
    chain = [out]
    prev = _producer(out.input) if not isinstance(out.input, (list, tuple)) else None
    while isinstance(prev, layers.Dropout):
        chain.append(prev)
        prev = _producer(prev.input)
    return chain[::-1]


def _activation_name(layer) -> str | None:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", None)


def head_for_existing(model: keras.Model, head: HeadSpec) -> keras.Model:
    """A copy of `model` for fine-tuning: its trunk (weights copied), with a head fitting `head`.

    The output layer is kept when it already matches (a Dense with the same units and activation);
    otherwise it is replaced, with the Dropout feeding it, by a new Dropout + Dense "output".
    The given model is not modified. The copy keeps the pixel scale of the version it came from.
    """
    head = head.validated()
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    out = _output_layer(copy)
    if (isinstance(out, layers.Dense) and out.units == head.outputs
            and _activation_name(out) == head.activation):
        return copy
    chain = _head_layers(copy)
    features = chain[0].input
    if isinstance(features, (list, tuple)):
        raise ValueError("the output layer of the model takes several inputs; cannot replace its head")
    trunk = keras.Model(copy.inputs, features)
    taken = {layer.name for layer in trunk.layers}
    return keras.Model(copy.inputs, _add_head(features, head, taken), name=copy.name)


def backbone_layers(model: keras.Model) -> list:
    """The backbone's layers in order (no input layers): the nested backbone's, or a flat model's trunk."""
    nested = backbone_of(model)
    if nested is not None:
        return [layer for layer in nested.layers if not isinstance(layer, layers.InputLayer)]
    head = {id(layer) for layer in _head_layers(model)}
    return [layer for layer in model.layers
            if not isinstance(layer, layers.InputLayer) and id(layer) not in head
            and not layer.name.startswith(PREPROCESS_NAME)]


def _set_tree(layer, trainable: bool) -> None:
    """Set `layer` and, explicitly, every layer nested in it; BatchNormalization layers stay frozen."""
    layer.trainable = trainable and not isinstance(layer, layers.BatchNormalization)
    for sub in getattr(layer, "layers", None) or []:
        _set_tree(sub, trainable)


def set_trainable(model: keras.Model, *, backbone_trainable: bool, unfreeze_top: int | None = None) -> None:
    """Freeze or unfreeze the backbone; the head is always trainable, ``preprocess`` never.

    backbone_trainable=False: only the head trains (`unfreeze_top` is ignored).
    backbone_trainable=True: the top `unfreeze_top` layers of :func:`backbone_layers` become trainable
    (None = all of them, 0 = none). BatchNormalization layers always stay frozen (inference mode), as Keras
    recommends for fine-tuning. Every flag is set explicitly (Keras does not propagate ``model.trainable = True``
    into nested functional models), so phases can go frozen -> unfrozen -> frozen in any order.
    Recompile the model afterwards (compile_for_task) for the change to apply.
    """
    if unfreeze_top is not None and (isinstance(unfreeze_top, bool) or not isinstance(unfreeze_top, (int, np.integer))
                                     or unfreeze_top < 0):
        raise ValueError(f"unfreeze_top must be None or an integer >= 0, got {unfreeze_top!r}")
    trunk = backbone_layers(model)
    chosen = []
    if backbone_trainable:
        chosen = trunk if unfreeze_top is None else trunk[len(trunk) - min(int(unfreeze_top), len(trunk)):]
    chosen_ids = {id(layer) for layer in chosen}
    trunk_ids = {id(layer) for layer in trunk}
    model.trainable = True
    nested = backbone_of(model)
    if nested is not None:
        nested.trainable = bool(chosen)  # the container first: Keras may propagate it to its layers
    for layer in trunk:
        _set_tree(layer, id(layer) in chosen_ids)
    for layer in model.layers:  # outside the backbone: the head trains, the input preprocessing never
        if layer is nested or id(layer) in trunk_ids or isinstance(layer, layers.InputLayer):
            continue
        _set_tree(layer, not layer.name.startswith(PREPROCESS_NAME))


# --------------------------------------------------------------------------- optimizers and schedules

def make_optimizer(name: str, learning_rate, *, momentum: float = 0.9,
                   weight_decay: float = 1e-4) -> keras.optimizers.Optimizer:
    """A Keras optimizer; `learning_rate` is a float or a LearningRateSchedule.

    `momentum` is used by "sgd" only, `weight_decay` (decoupled) by "adamw" only.
    """
    _choice("optimizer", name, OPTIMIZERS)
    if not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        learning_rate = float(learning_rate)
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    opt = keras.optimizers
    if name == "adam":
        return opt.Adam(learning_rate=learning_rate)
    if name == "adamw":
        return opt.AdamW(learning_rate=learning_rate, weight_decay=float(weight_decay))
    if name == "sgd":
        return opt.SGD(learning_rate=learning_rate, momentum=float(momentum))
    if name == "rmsprop":
        return opt.RMSprop(learning_rate=learning_rate)
    if name == "nadam":
        return opt.Nadam(learning_rate=learning_rate)
    return opt.Adagrad(learning_rate=learning_rate)


@keras.saving.register_keras_serializable(package="imgq")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """lr = target * (step + 1) / warmup_steps for the first warmup_steps, then after(step - warmup_steps)."""

    def __init__(self, target: float, warmup_steps: int, after):
        self.target = float(target)
        self.warmup_steps = int(warmup_steps)
        if isinstance(after, dict):
            after = keras.optimizers.schedules.deserialize(after)
        self.after = after

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        warm = self.target * (step + 1.0) / float(self.warmup_steps)
        rest = step - float(self.warmup_steps)
        later = self.after(ops.maximum(rest, 0.0)) if callable(self.after) else self.after
        return ops.where(rest < 0, warm, ops.cast(later, "float32"))

    def get_config(self):
        after = self.after
        if isinstance(after, keras.optimizers.schedules.LearningRateSchedule):
            after = keras.optimizers.schedules.serialize(after)
        return {"target": self.target, "warmup_steps": self.warmup_steps, "after": after}


def make_schedule(kind: str, base_lr: float, *, steps_per_epoch: int, epochs: int, warmup_epochs: int = 0):
    """A learning rate (float) or a LearningRateSchedule over optimizer steps.

    constant: base_lr; cosine: from base_lr to 0 at the end (CosineDecay); step: x0.1 after each third of
    training (PiecewiseConstantDecay); exponential: smooth decay to base_lr * 0.01 at the end (ExponentialDecay).
    With warmup_epochs > 0 the lr first ramps linearly up to base_lr over those epochs, and the decay covers the
    remaining steps (warmup_epochs >= epochs: training ends within the ramp, no error). Built-in Keras schedules
    where possible; the warmup is :class:`LinearWarmup`.
    """
    _choice("schedule", kind, LR_SCHEDULES)
    base_lr = float(base_lr)
    if not base_lr > 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    for label, value in (("steps_per_epoch", steps_per_epoch), ("epochs", epochs)):
        if int(value) < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    if int(warmup_epochs) < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    warmup = int(steps_per_epoch) * int(warmup_epochs)
    steps = max(1, int(steps_per_epoch) * int(epochs) - warmup)
    sched = keras.optimizers.schedules
    if kind == "constant":
        after = base_lr
    elif kind == "cosine":
        after = sched.CosineDecay(base_lr, decay_steps=steps, alpha=0.0)
    elif kind == "step":
        b1, b2 = max(1, round(steps / 3)), max(2, round(2 * steps / 3))
        after = sched.PiecewiseConstantDecay([b1, b2], [base_lr, base_lr * 0.1, base_lr * 0.01])
    else:
        after = sched.ExponentialDecay(base_lr, decay_steps=steps, decay_rate=0.01)
    if warmup == 0:
        return after
    return LinearWarmup(base_lr, warmup, after)


# ------------------------------------------------------------------------------- augmentation, compile

def make_augmentation(spec: Augmentation | dict | None, task: str, *, seed: int = 0):
    """The stateless augmentation a request asks for (worker/training/augmentation.py: apply as
    `augment(image, item, epoch)` to 0..255 pixels), or None when `spec` asks for nothing.

    `spec` is a train request's `augmentation` (shared/schemas/training.Augmentation; a dict is validated as one,
    so the keys and ranges are the request's). For "keypoints" the geometric ones are refused: they would move the
    points.
    """
    from worker.training.augmentation import StatelessAugmentation  # imports TensorFlow

    _choice("task", task, TRAINABLE_TASKS)
    asked = (spec if isinstance(spec, Augmentation) else Augmentation.model_validate(spec or {})).asked()
    if task == "keypoints":
        bad = [k for k in GEOMETRIC_AUGMENTATIONS if k in asked]
        if bad:
            photometric = ", ".join(a for a in AUGMENTATIONS if a not in GEOMETRIC_AUGMENTATIONS)
            raise ValueError(f"augmentation {bad[0]!r} is geometric and would move the keypoints; "
                             f"keypoint models take only {photometric}")
    if not asked:
        return None
    return StatelessAugmentation({name: float(value) for name, value in asked.items()}, int(seed))


def compile_for_task(model: keras.Model, task: str, optimizer) -> None:
    """regression / keypoints: mse loss, "mae" metric; classification: sparse categorical cross-entropy, "accuracy".

    `optimizer`: a keras Optimizer, or a name from OPTIMIZERS (learning rate 1e-3).
    """
    _choice("task", task, TRAINABLE_TASKS)
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, 1e-3)
    if task == "classification":  # the metric's name is the one early stopping may watch (FIT_METRICS)
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name=FIT_METRICS[task])]
    else:
        loss = keras.losses.MeanSquaredError()
        metrics = [keras.metrics.MeanAbsoluteError(name=FIT_METRICS[task])]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
