"""A Keras file's layers read without TensorFlow (shared/models/keras_config.py): layer names, and the layer
before the head on Functional and Sequential models, the ones the worker's Keras sees."""
import keras
import pytest
from keras import layers

from shared.models.keras_config import KerasConfigError, layer_before_head, layer_graph
from tests.helpers import tiny_cnn


def saved(tmp_path, model, name="m"):
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return path


def test_a_functional_models_default_layer_is_the_one_feeding_its_final_dense(tmp_path):
    model = tiny_cnn(32, 3, "softmax")
    graph = layer_graph(saved(tmp_path, model))
    assert graph.names() == [layer.name for layer in model.layers if type(layer).__name__ != "InputLayer"]
    assert len(graph.names()) == 5
    assert graph.outputs == [model.layers[-1].name]
    assert layer_before_head(graph) == model.layers[-2].name  # the GlobalAveragePooling2D
    assert type(model.get_layer(layer_before_head(graph))).__name__ == "GlobalAveragePooling2D"


def test_a_sequential_models_default_layer_passes_over_dropout_to_the_pooling(tmp_path):
    model = keras.Sequential([keras.Input((32, 32, 3)), layers.Conv2D(4, 3, name="conv"),
                              layers.GlobalAveragePooling2D(name="pool"), layers.Dropout(0.3, name="drop"),
                              layers.GaussianNoise(0.1, name="noise"), layers.Dense(2, name="head")])
    graph = layer_graph(saved(tmp_path, model))
    assert graph.names() == ["conv", "pool", "drop", "noise", "head"]
    assert layer_before_head(graph) == "pool"


def test_a_trained_models_default_layer_is_its_nested_backbone(tmp_path):
    from worker.training.models import HeadSpec, build_model

    graph = layer_graph(saved(tmp_path, build_model("vgg", (32, 32), HeadSpec("regression", 1), width=4)))
    assert graph.names() == ["preprocess", "backbone", "head_dropout", "output"]
    assert layer_before_head(graph) == "backbone"


def test_a_functional_model_with_a_branch_follows_the_heads_own_input(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = layers.GlobalAveragePooling2D(name="gap")(inputs)
    layers.Dense(3, name="side")(x)  # a branch the model does not output
    features = layers.Dense(5, name="features")(x)
    model = keras.Model(inputs, layers.Dense(1, name="head")(layers.Dropout(0.1)(features)))
    assert layer_before_head(layer_graph(saved(tmp_path, model))) == "features"


@pytest.mark.parametrize("build, text", [
    (lambda: _two_outputs(), "2 outputs"),
    (lambda: _dense_on_input(), "no layer comes before the model's head"),
    (lambda: _merged_head(), "takes 2 inputs"),
])
def test_models_without_one_layer_before_the_head_say_to_name_one(tmp_path, build, text):
    with pytest.raises(KerasConfigError, match=text):
        layer_before_head(layer_graph(saved(tmp_path, build())))


def _two_outputs():
    inputs = keras.Input((8,))
    x = layers.Dense(4)(inputs)
    return keras.Model(inputs, [layers.Dense(1)(x), layers.Dense(2)(x)])


def _dense_on_input():
    inputs = keras.Input((8,))
    return keras.Model(inputs, layers.Dense(1)(inputs))


def _merged_head():
    inputs = keras.Input((8,))
    return keras.Model(inputs, layers.Add()([layers.Dense(4)(inputs), layers.Dense(4)(inputs)]))


def test_a_file_that_is_not_a_keras_zip_is_a_clear_error_naming_no_path(tmp_path):
    (tmp_path / "x.keras").write_bytes(b"not a zip")
    with pytest.raises(KerasConfigError) as err:
        layer_graph(tmp_path / "x.keras")
    assert "cannot read the model file's layers" in str(err.value) and str(tmp_path) not in str(err.value)
    with pytest.raises(KerasConfigError):
        layer_graph(tmp_path / "missing.keras")
