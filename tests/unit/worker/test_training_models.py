"""worker.training.models: architectures, heads, backbone weights, freezing, optimizers, schedules, augmentation."""
from __future__ import annotations

import numpy as np
import pytest

from worker.training import models as M

keras = pytest.importorskip("keras")

RNG = np.random.default_rng(0)


def images(n: int, size: int) -> np.ndarray:
    return (RNG.random((n, size, size, 3)) * 255).astype("float32")


def to_np(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


def layer_weights(layer) -> list[np.ndarray]:
    return [np.array(w) for w in layer.get_weights()]


def same_weights(a, b) -> bool:
    wa, wb = layer_weights(a), layer_weights(b)
    return len(wa) == len(wb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb))


def small_size(arch: str) -> int:
    return 16 if arch == "vgg" else M.MIN_INPUT_SIZE[arch]


# --------------------------------------------------------------------------------------------- building

REFERENCE_PREPROCESS = {
    "vgg": lambda x: x / 255.0,
    "resnet50": lambda x: keras.applications.resnet50.preprocess_input(x.copy()),
    "xception": lambda x: keras.applications.xception.preprocess_input(x.copy()),
}


@pytest.mark.parametrize("arch", M.ARCHITECTURES)
def test_every_architecture_builds_a_classifier_on_raw_pixels(arch):
    size = small_size(arch)
    model = M.build_model(arch, (size, size), M.HeadSpec("classification", 3), width=4)
    x = images(2, size)
    y = to_np(model(x, training=False))
    assert model.input_shape == (None, size, size, 3)
    assert y.shape == (2, 3)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    assert (y >= 0).all()
    assert model.layers[-1].name == "output"
    assert isinstance(M.backbone_of(model), keras.Model)
    assert M.backbone_layers(model) and all(
        layer in M.backbone_of(model).layers for layer in M.backbone_layers(model))
    assert M.recommended_pixel_scale(arch) == "raw"
    names = [layer.name for layer in model.layers]
    if arch in REFERENCE_PREPROCESS:  # our preprocess layer turns raw pixels into what the backbone wants
        got = to_np(model.get_layer("preprocess")(x))
        np.testing.assert_allclose(got, REFERENCE_PREPROCESS[arch](x), rtol=1e-5, atol=1e-3)
        assert not model.get_layer("preprocess").trainable_weights
    else:  # MobileNetV3 / EfficientNet rescale raw pixels themselves
        assert "preprocess" not in names
        assert any(isinstance(layer, keras.layers.Rescaling) for layer in M.backbone_of(model).layers[:3])


@pytest.mark.parametrize("arch", ["vgg", "mobilenet_v3_small"])
@pytest.mark.parametrize("task, outputs, activation", [
    ("regression", 2, "linear"), ("classification", 4, "softmax"), ("keypoints", 6, "sigmoid")])
def test_every_task_head(arch, task, outputs, activation):
    size = small_size(arch)
    model = M.build_model(arch, (size, size), M.HeadSpec(task, outputs), width=4)
    y = to_np(model(images(3, size) * 4 - 500, training=False))  # far-off inputs: big logits
    out = model.get_layer("output")
    assert y.shape == (3, outputs)
    assert out.activation.__name__ == activation
    assert model.get_layer("head_dropout").rate == pytest.approx(0.2)
    if task == "keypoints":
        assert ((y >= 0) & (y <= 1)).all()
    if task == "classification":
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)


def test_pixel_scale_and_size_options():
    for scale, x in (("unit", 0.75), ("raw", 191.25)):  # both are 0.5 in Xception's [-1, 1]
        model = M.build_model("xception", (71, 80), M.HeadSpec("regression", 1), pixel_scale=scale)
        assert model.input_shape == (None, 71, 80, 3)
        got = to_np(model.get_layer("preprocess")(np.full((1, 2, 2, 3), x, "float32")))
        np.testing.assert_allclose(got, 0.5, atol=1e-6)
    symmetric = M.build_model("xception", 71, M.HeadSpec("regression", 1), pixel_scale="symmetric")
    assert "preprocess" not in [layer.name for layer in symmetric.layers]  # already what Xception wants
    unit_vgg = M.build_model("vgg", 16, M.HeadSpec("regression", 1), width=4, pixel_scale="unit")
    assert "preprocess" not in [layer.name for layer in unit_vgg.layers]


@pytest.mark.parametrize("kwargs, message", [
    (dict(architecture="alexnet"), "vgg, mobilenet_v3_small"),
    (dict(architecture="xception", input_size=(64, 64)), "at least 71x71"),
    (dict(head=M.HeadSpec("classification", 1)), "at least 2 classes"),
    (dict(head=M.HeadSpec("keypoints", 3)), "even number"),
    (dict(head=M.HeadSpec("segmentation", 3)), "regression, classification, keypoints"),
    (dict(pixel_scale="imagenet"), "unit, raw, symmetric"),
])
def test_bad_build_arguments(kwargs, message):
    args = dict(architecture="vgg", input_size=(16, 16), head=M.HeadSpec("regression", 1)) | kwargs
    with pytest.raises(ValueError, match=message):
        M.build_model(args.pop("architecture"), args.pop("input_size"), args.pop("head"), **args)


def test_saved_model_loads_in_safe_mode(tmp_path):
    from shared.models.model_inspect import load_keras_safely

    model = M.build_model("resnet50", (32, 32), M.HeadSpec("keypoints", 4))
    model.save(tmp_path / "m.keras")
    loaded = load_keras_safely(str(tmp_path / "m.keras"))
    x = images(2, 32)
    np.testing.assert_allclose(to_np(loaded(x)), to_np(model(x)), atol=1e-5)


# ------------------------------------------------------------------------------------- backbone weights

def test_backbone_weights_from_a_weights_file(tmp_path):
    path = str(tmp_path / "bb.weights.h5")
    head = M.HeadSpec("regression", 1)
    first = M.build_model("mobilenet_v3_small", (32, 32), head, seed=1)
    M.save_backbone_weights(first, path)
    fresh = M.build_model("mobilenet_v3_small", (32, 32), head, seed=2)
    loaded = M.build_model("mobilenet_v3_small", (32, 32), head, seed=2, backbone_weights=path)
    src, dst, ctl = (M.backbone_of(m) for m in (first, loaded, fresh))
    assert not all(same_weights(a, b) for a, b in zip(src.layers, ctl.layers))  # seeds do differ
    assert all(same_weights(a, b) for a, b in zip(src.layers, dst.layers))
    assert same_weights(fresh.get_layer("output"), loaded.get_layer("output"))  # the head is the new seed's


def test_backbone_weights_from_keras_files(tmp_path):
    from worker.training.architectures import vgg_regressor

    flat = vgg_regressor(16, outputs=1, width=4, seed=3)  # a flat model: matched by layer name
    flat.save(tmp_path / "flat.keras")
    ours = M.build_model("vgg", (16, 16), M.HeadSpec("classification", 3), width=4, seed=4)
    ours.save(tmp_path / "ours.keras")  # our own model: its nested backbone, by position
    ours.get_layer("backbone").save(tmp_path / "legacy.h5")  # a legacy HDF5 file, by layer order
    for source, name in ((flat, "flat.keras"), (M.backbone_of(ours), "ours.keras"), (M.backbone_of(ours), "legacy.h5")):
        model = M.build_model("vgg", (16, 16), M.HeadSpec("regression", 2), width=4, seed=5,
                              backbone_weights=str(tmp_path / name))
        trunk = [layer for layer in M.backbone_layers(model) if layer.weights]
        assert [layer.name for layer in trunk] == [f"block{b}_conv{c}" for b in (1, 2, 3) for c in (1, 2)] + ["fc1"]
        for layer in trunk:
            assert same_weights(layer, source.get_layer(layer.name)), (name, layer.name)


def test_missing_or_mismatched_backbone_weights(tmp_path):
    narrow = M.build_model("vgg", (16, 16), M.HeadSpec("regression", 1), width=4)
    M.save_backbone_weights(narrow, str(tmp_path / "narrow.weights.h5"))
    narrow.save_weights(str(tmp_path / "whole.weights.h5"))  # the whole model, not the backbone
    narrow.save(tmp_path / "narrow.keras")
    (tmp_path / "junk.weights.h5").write_bytes(b"not hdf5")
    keras.applications.MobileNetV3Small(include_top=True, weights=None, input_shape=(32, 32, 3), classes=5,
                                        name="backbone").save_weights(str(tmp_path / "with_top.weights.h5"))
    (tmp_path / "w.pt").write_bytes(b"x")
    cases = [("vgg", 8, "nope.weights.h5", "not found"),
             ("vgg", 8, "narrow.weights.h5", "do not fit"),
             ("vgg", 4, "whole.weights.h5", "do not fit"),
             ("vgg", 8, "narrow.keras", "do not fit"),
             ("mobilenet_v3_small", 4, "narrow.weights.h5", "do not fit"),
             ("mobilenet_v3_small", 4, "with_top.weights.h5", "do not fit"),  # Keras alone loads it silently
             ("vgg", 4, "junk.weights.h5", "cannot read"),
             ("vgg", 4, "w.pt", ".weights.h5, .keras or legacy .h5")]
    for arch, width, name, message in cases:
        with pytest.raises(ValueError, match=message):
            M.build_model(arch, (32, 32), M.HeadSpec("regression", 1), width=width,
                          backbone_weights=str(tmp_path / name))


# ------------------------------------------------------------------------------------- head_for_existing

def test_head_for_existing_swaps_the_head_and_keeps_the_trunk():
    base = M.build_model("vgg", (16, 16), M.HeadSpec("regression", 1), width=4, seed=7)
    before = {layer.name: layer_weights(layer) for layer in base.layers}
    new = M.head_for_existing(base, M.HeadSpec("classification", 3))
    assert new.output_shape == (None, 3)
    assert new.get_layer("output").activation.__name__ == "softmax"
    assert base.output_shape == (None, 1) and new.get_layer("output") is not base.get_layer("output")
    for layer in base.layers[:-2]:  # everything up to the head: same weights, in a separate copy
        assert same_weights(layer, new.get_layer(layer.name))
        if layer.weights:
            assert new.get_layer(layer.name) is not layer
    assert all(np.array_equal(a, b) for name, ws in before.items()
               for a, b in zip(ws, layer_weights(base.get_layer(name))))  # the given model is untouched
    x = images(2, 16)
    assert np.allclose(M.backbone_of(new)(x), M.backbone_of(base)(x))

    kept = M.head_for_existing(base, M.HeadSpec("regression", 1))
    assert same_weights(kept.get_layer("output"), base.get_layer("output"))
    swapped = M.head_for_existing(base, M.HeadSpec("regression", 2))
    assert swapped.output_shape == (None, 2)
    sig = M.head_for_existing(base, M.HeadSpec("keypoints", 2))  # same units, other activation: replaced
    assert sig.get_layer("output").activation.__name__ == "sigmoid"


def test_head_for_existing_on_a_flat_registered_model():
    from worker.training.architectures import vgg_regressor

    flat = vgg_regressor(16, outputs=1, width=4)
    new = M.head_for_existing(flat, M.HeadSpec("keypoints", 4))
    assert new.output_shape == (None, 4)
    trunk = M.backbone_layers(new)
    assert [layer.name for layer in trunk][-2:] == ["gap", "fc1"]
    assert all(same_weights(layer, flat.get_layer(layer.name)) for layer in trunk)


# ------------------------------------------------------------------------------------------ freezing

def _changed(model, before) -> set[str]:
    return {w.path for w, b in zip(model.weights, before) if not np.array_equal(w.numpy(), b)}


def test_frozen_backbone_only_the_head_trains():
    model = M.build_model("mobilenet_v3_small", (32, 32), M.HeadSpec("regression", 2))
    M.set_trainable(model, backbone_trainable=False)
    M.compile_for_task(model, "regression", M.make_optimizer("adam", 1e-2))
    before = [w.numpy().copy() for w in model.weights]
    model.fit(images(8, 32), RNG.random((8, 2)), batch_size=4, epochs=1, verbose=0)
    assert _changed(model, before) == {"output/kernel", "output/bias"}  # BatchNorm statistics too stay put
    assert len(model.trainable_weights) == 2


def test_unfreeze_top_layers_trains_exactly_those():
    model = M.build_model("vgg", (16, 16), M.HeadSpec("regression", 1), width=4)
    M.set_trainable(model, backbone_trainable=False)  # the head phase first, as a train request's freeze phases do
    M.set_trainable(model, backbone_trainable=True, unfreeze_top=5)
    assert [layer.name for layer in M.backbone_layers(model) if layer.trainable] == [
        "block3_conv1", "block3_conv2", "block3_pool", "gap", "fc1"]
    M.compile_for_task(model, "regression", M.make_optimizer("sgd", 0.05))
    before = [w.numpy().copy() for w in model.weights]
    model.fit(images(8, 16), RNG.random((8, 1)), batch_size=4, epochs=1, verbose=0)
    layers_changed = {path.split("/")[0] for path in _changed(model, before)}
    assert layers_changed == {"block3_conv1", "block3_conv2", "fc1", "output"}


def test_unfreeze_top_keeps_batchnorm_frozen():
    model = M.build_model("mobilenet_v3_small", (32, 32), M.HeadSpec("classification", 3))
    trunk = M.backbone_layers(model)
    bn = keras.layers.BatchNormalization
    k = 20
    M.set_trainable(model, backbone_trainable=False)
    assert not any(layer.trainable for layer in trunk) and len(model.trainable_weights) == 2
    M.set_trainable(model, backbone_trainable=True, unfreeze_top=k)
    expected = [i >= len(trunk) - k and not isinstance(layer, bn) for i, layer in enumerate(trunk)]
    assert [layer.trainable for layer in trunk] == expected
    assert any(isinstance(layer, bn) for layer in trunk[-k:])  # the case is really exercised
    want = {id(w) for layer in trunk[-k:] if not isinstance(layer, bn) for w in layer.trainable_weights}
    want |= {id(w) for w in model.get_layer("output").weights}
    assert {id(w) for w in model.trainable_weights} == want

    M.set_trainable(model, backbone_trainable=True)  # everything but BatchNorm
    assert all(layer.trainable != isinstance(layer, bn) for layer in trunk)
    M.set_trainable(model, backbone_trainable=False, unfreeze_top=k)  # frozen phase ignores unfreeze_top
    assert not any(layer.trainable for layer in trunk) and len(model.trainable_weights) == 2
    with pytest.raises(ValueError, match="unfreeze_top"):
        M.set_trainable(model, backbone_trainable=True, unfreeze_top=-1)


def test_preprocess_layer_stays_frozen():
    model = M.build_model("resnet50", (32, 32), M.HeadSpec("regression", 1))
    model.get_layer("preprocess").trainable = True  # e.g. after a careless model.trainable = True
    M.set_trainable(model, backbone_trainable=True)
    assert not model.get_layer("preprocess").trainable
    assert not {id(w) for w in model.get_layer("preprocess").weights} & {id(w) for w in model.trainable_weights}


# ------------------------------------------------------------------------------ optimizers, schedules

def _tiny(task: str = "regression", outputs: int = 1) -> keras.Model:
    inputs = keras.Input((4,))
    act = M.HEAD_ACTIVATION[task]
    return keras.Model(inputs, keras.layers.Dense(outputs, activation=act, name="output")(inputs))


@pytest.mark.parametrize("name", M.OPTIMIZERS)
def test_every_optimizer_takes_a_step(name):
    model = _tiny()
    opt = M.make_optimizer(name, 0.1, momentum=0.5, weight_decay=0.01)
    M.compile_for_task(model, "regression", opt)
    before = model.get_layer("output").kernel.numpy().copy()
    model.train_on_batch(np.ones((4, 4), "float32"), np.full((4, 1), 10.0, "float32"))
    assert not np.allclose(before, model.get_layer("output").kernel.numpy())
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.1)
    if name == "sgd":
        assert opt.momentum == pytest.approx(0.5)
    if name == "adamw":
        assert opt.weight_decay == pytest.approx(0.01)


def test_bad_optimizer_and_schedule_names():
    with pytest.raises(ValueError, match="adam, adamw, sgd, rmsprop, nadam, adagrad"):
        M.make_optimizer("lbfgs", 0.1)
    with pytest.raises(ValueError, match="constant, cosine, step, exponential"):
        M.make_schedule("linear", 0.1, steps_per_epoch=10, epochs=3)
    with pytest.raises(ValueError, match="warmup_epochs"):
        M.make_schedule("cosine", 0.1, steps_per_epoch=10, epochs=3, warmup_epochs=-1)


def _lr(schedule, step) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step))) if callable(schedule) else float(schedule)


def test_schedules():
    base, spe, epochs = 0.1, 10, 6  # 60 steps
    assert M.make_schedule("constant", base, steps_per_epoch=spe, epochs=epochs) == base

    cos = M.make_schedule("cosine", base, steps_per_epoch=spe, epochs=epochs)
    assert _lr(cos, 0) == pytest.approx(base)
    assert _lr(cos, 30) == pytest.approx(base / 2, rel=1e-4)
    assert _lr(cos, 60) == pytest.approx(0.0, abs=1e-7)

    step = M.make_schedule("step", base, steps_per_epoch=spe, epochs=epochs)
    assert [_lr(step, s) for s in (0, 19, 21, 39, 41, 59)] == pytest.approx(
        [base, base, base * 0.1, base * 0.1, base * 0.01, base * 0.01])

    exp = M.make_schedule("exponential", base, steps_per_epoch=spe, epochs=epochs)
    assert _lr(exp, 0) == pytest.approx(base)
    assert _lr(exp, 30) == pytest.approx(base * 0.1, rel=1e-4)
    assert _lr(exp, 60) == pytest.approx(base * 0.01, rel=1e-4)

    warm = M.make_schedule("cosine", base, steps_per_epoch=spe, epochs=epochs, warmup_epochs=2)  # 20 + 40
    assert [_lr(warm, s) for s in (0, 9, 19)] == pytest.approx([base / 20, base / 2, base])
    assert _lr(warm, 20) == pytest.approx(base)
    assert _lr(warm, 40) == pytest.approx(base / 2, rel=1e-4)
    assert _lr(warm, 60) == pytest.approx(0.0, abs=1e-7)
    flat = M.make_schedule("constant", base, steps_per_epoch=spe, epochs=epochs, warmup_epochs=1)
    assert [_lr(flat, s) for s in (0, 4, 9, 10, 59)] == pytest.approx([base / 10, base / 2, base, base, base])
    stepped = M.make_schedule("step", base, steps_per_epoch=spe, epochs=epochs, warmup_epochs=3)  # 30 + 30
    assert [_lr(stepped, s) for s in (14, 35, 45, 55)] == pytest.approx([base / 2, base, base * 0.1, base * 0.01])
    short = M.make_schedule("step", base, steps_per_epoch=spe, epochs=1, warmup_epochs=2)  # a phase inside the ramp
    assert [_lr(short, s) for s in (0, 9)] == pytest.approx([base / 20, base / 2])


def test_warmup_schedule_survives_saving(tmp_path):
    sched = M.make_schedule("exponential", 0.01, steps_per_epoch=2, epochs=3, warmup_epochs=1)
    model = _tiny()
    M.compile_for_task(model, "regression", M.make_optimizer("adam", sched))
    model.train_on_batch(np.ones((2, 4), "float32"), np.ones((2, 1), "float32"))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.optimizer.get_config()["learning_rate"]["class_name"] == "LinearWarmup"
    assert float(keras.ops.convert_to_numpy(loaded.optimizer.learning_rate)) == pytest.approx(_lr(sched, 1))


# ------------------------------------------------------------------------------ augmentation, compile

def test_augmentation():
    assert M.make_augmentation({}, "regression") is None
    assert M.make_augmentation({"flip": False, "zoom": 0}, "classification") is None
    aug = M.make_augmentation({"flip": True, "rotation": 0.1, "zoom": 0.1, "contrast": 0.2, "brightness": 0.2,
                               "translate": 0.1}, "classification", seed=1)
    assert aug.names == ["flip", "rotation", "zoom", "contrast", "brightness", "translate"]
    x = images(1, 16)[0]
    y = to_np(aug(x, 0, 0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 255 and not np.allclose(x, y)

    photometric = M.make_augmentation({"contrast": 0.2, "brightness": 0.1}, "keypoints")
    assert photometric.names == ["contrast", "brightness"]
    for key, value in (("flip", True), ("rotation", 0.1), ("zoom", 0.1), ("translate", 0.1)):
        with pytest.raises(ValueError, match=f"'{key}' is geometric"):
            M.make_augmentation({"contrast": 0.1, key: value}, "keypoints")
    # the request's own model (shared/schemas/training.Augmentation) checks the keys and ranges
    with pytest.raises(ValueError, match="blur\n  Extra inputs are not permitted"):
        M.make_augmentation({"blur": 1.0}, "regression")
    with pytest.raises(ValueError, match="zoom\n  Input should be less than or equal to 1"):
        M.make_augmentation({"zoom": 3}, "regression")
    with pytest.raises(ValueError, match="rotation\n  Input should be a valid number"):
        M.make_augmentation({"rotation": True}, "regression")


def test_augmentation_applies_every_word_of_the_requests_vocabulary():
    from shared.core.vocab import AUGMENTATIONS, SWITCH_AUGMENTATIONS
    from shared.schemas.training import TrainRequest

    every = {name: True if name in SWITCH_AUGMENTATIONS else 0.1 for name in AUGMENTATIONS}
    req = TrainRequest.model_validate({"model": "m", "task": "classification", "input_size": 16,
                                       "dataset": {"path": "x.csv", "label_column": "label"},
                                       "base": {"architecture": "vgg"}, "augmentation": every})
    aug = M.make_augmentation(req.augmentation, req.task, seed=1)
    assert sorted(aug.names) == sorted(AUGMENTATIONS)
    assert to_np(aug(images(1, 16)[0], 3, 1)).shape == (16, 16, 3)


@pytest.mark.parametrize("task", ["regression", "classification", "keypoints"])
def test_training_records_exactly_what_early_stopping_may_watch(task):
    from shared.core.vocab import fit_monitors

    outputs = 3 if task == "classification" else 2
    model = _tiny(task, outputs)
    M.compile_for_task(model, task, "adam")
    y = RNG.integers(0, outputs, 8) if task == "classification" else RNG.random((8, outputs))
    history = model.fit(np.ones((8, 4), "float32"), y, epochs=1, verbose=0, validation_split=0.5)
    assert set(history.history) == set(fit_monitors(task))


@pytest.mark.parametrize("task, outputs, loss, metric", [
    ("regression", 2, keras.losses.MeanSquaredError, "mae"),
    ("keypoints", 2, keras.losses.MeanSquaredError, "mae"),
    ("classification", 3, keras.losses.SparseCategoricalCrossentropy, "accuracy")])
def test_compile_for_task(task, outputs, loss, metric):
    model = _tiny(task, outputs)
    M.compile_for_task(model, task, "adam")
    assert isinstance(model.loss, loss)
    y = RNG.integers(0, outputs, 4) if task == "classification" else RNG.random((4, outputs))
    history = model.fit(np.ones((4, 4), "float32"), y, epochs=1, verbose=0)
    assert set(history.history) == {"loss", metric}
    with pytest.raises(ValueError, match="regression, classification, keypoints"):
        M.compile_for_task(model, "ranking", "adam")
