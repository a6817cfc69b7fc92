"""A Keras 3 file's top-level layers read from its `config.json`, without TensorFlow: what the web front needs to
check a layer name and to find the layer before the head when an embed job is submitted (it may not import
TensorFlow; the worker checks the layer again when it builds the sub-model, worker/embedding.py).

The layer before the head, the layer an embed job reads by default from a model that is not an `embedding` model:
start at the model's one output layer (the head, e.g. the final Dense) and take the one layer whose output it
takes; while that layer is the identity at inference (a dropout or noise layer), take the layer it takes its input
from instead. So `... -> GlobalAveragePooling2D -> Dropout -> Dense` embeds with the pooling layer, and a model
built by worker/training/models.build_model (`backbone -> head_dropout -> output`) with its nested backbone.
Functional models are followed along their graph (`inbound_nodes`), Sequential models along their layer order.
Only top-level layers count: a nested model is one layer, and its own layers cannot be named.

Errors are KerasConfigError (a ValueError) with a message a client can act on; no message holds a server path.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

IDENTITY_AT_INFERENCE = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
                         "GaussianNoise", "AlphaDropout", "ActivityRegularization")
INPUT_LAYER = "InputLayer"
MAX_CONFIG_BYTES = 64 << 20  # a config.json bigger than this is not a model imgq registered


class KerasConfigError(ValueError):
    pass


@dataclass
class Layer:
    name: str
    kind: str  # the Keras class name, e.g. "Dense"
    inputs: list[str] = field(default_factory=list)  # the layers whose outputs it takes, in order, once each


@dataclass
class LayerGraph:
    layers: list[Layer]  # in the model's order
    outputs: list[str]  # the layers whose outputs are the model's outputs

    def get(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KerasConfigError(f"the model's config refers to a layer {name!r} it does not hold")

    def names(self) -> list[str]:
        """Every top-level layer a sub-model can end at (input layers left out)."""
        return [layer.name for layer in self.layers if layer.kind != INPUT_LAYER]


def read_config(path: Path) -> dict:
    """The model's config (`config.json` inside the .keras zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                raise KerasConfigError("the model file's config.json is too large to read")
            return json.loads(archive.read("config.json"))
    except KerasConfigError:
        raise
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise KerasConfigError(f"cannot read the model file's layers ({type(exc).__name__})") from None


def _tensor_sources(node) -> list[str]:
    """Names of the layers whose output tensors appear anywhere in one inbound node's arguments."""
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "__keras_tensor__":
                history = (item.get("config") or {}).get("keras_history") or []
                if history:
                    found.append(str(history[0]))
                continue
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return found


def _functional(config: dict) -> LayerGraph:
    layers = []
    for entry in config.get("layers") or []:
        name = entry.get("name") or (entry.get("config") or {}).get("name")
        sources = [s for node in entry.get("inbound_nodes") or [] for s in _tensor_sources(node)]
        layers.append(Layer(str(name), str(entry.get("class_name")), list(dict.fromkeys(sources))))
    outputs = config.get("output_layers") or []
    if outputs and isinstance(outputs[0], str):  # one output is stored as [name, node, tensor], not a list of them
        outputs = [outputs]
    return LayerGraph(layers, [str(out[0]) for out in outputs])


def _sequential(config: dict) -> LayerGraph:
    layers, previous = [], []
    for entry in config.get("layers") or []:
        layer = Layer(str((entry.get("config") or {}).get("name")), str(entry.get("class_name")), previous)
        layers.append(layer)
        previous = [layer.name]
    return LayerGraph(layers, previous)


def layer_graph(path: Path) -> LayerGraph:
    """The model's top-level layers and which ones feed which."""
    model = read_config(path)
    kind, config = model.get("class_name"), model.get("config") or {}
    if kind == "Sequential":
        return _sequential(config)
    if kind in ("Functional", "Model") and "layers" in config:
        return _functional(config)
    raise KerasConfigError(f"cannot follow the layers of a {kind} model (only Functional and Sequential models)")


def layer_before_head(graph: LayerGraph) -> str:
    """The default embedding layer (see the module docstring)."""
    if len(graph.outputs) != 1:
        raise KerasConfigError(f"the model has {len(graph.outputs)} outputs; name the layer to embed with")
    layer = graph.get(graph.outputs[0])
    while True:
        if len(layer.inputs) != 1:
            raise KerasConfigError(f"layer {layer.name!r} takes {len(layer.inputs)} inputs, so no single layer comes "
                                   "before it; name the layer to embed with")
        layer = graph.get(layer.inputs[0])
        if layer.kind == INPUT_LAYER:
            raise KerasConfigError("no layer comes before the model's head but its input; name the layer to embed "
                                   "with")
        if layer.kind not in IDENTITY_AT_INFERENCE:
            return layer.name
