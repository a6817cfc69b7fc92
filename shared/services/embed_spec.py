"""What an embed job makes, decided when it is submitted and stored as the job's `spec`: the catalog its vectors go
to and the embedding space they are in (shared/models/embedding_space.py), with the layer read checked against the
model file without TensorFlow (shared/models/keras_config.py); and that spec as a job's description shows it.

spec = {"catalog", "space", "layer", "normalize"}, plus "dim" once a worker has built the embedder (the width of
the layer's output, which only Keras knows for sure). `layer` is None only for a model registered with task
`embedding` read at its output; any other model reads the layer it names, or the layer before its head.
A layer the file does not hold is a 400 at submission; a file the web front cannot read leaves the check to the
worker, which fails the job with the reason.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from shared.core import names
from shared.core.errors import InvalidRequest, Unprocessable
from shared.core.tables import Job, ModelVersion
from shared.core.vocab import EMBEDDING_TASK
from shared.models import keras_config
from shared.models.embedding_space import MAX_LAYER_LENGTH, check_layer, space_name
from shared.services.model_files import version_file

if TYPE_CHECKING:
    from shared.core.config import Settings

SHOWN_LAYERS = 30  # an unknown layer's message lists at most this many of the model's layers


def embedding_spec(version: ModelVersion, *, catalog: str, layer: str | None, normalize: bool,
                   settings: Settings) -> dict:
    """The spec of an embed job with `version`; InvalidRequest or Unprocessable naming the field at fault. The
    model's layers are read from its file (this machine's copy: shared/services/model_files.py)."""
    names.check_name(catalog, "catalog")
    if layer is not None:
        check_layer(layer)
        _check_layer_exists(version, layer, settings)
    elif version.task != EMBEDDING_TASK:
        layer = _layer_before_head(version, settings)
    return {"catalog": catalog, "space": space_name(version.name, version.version, layer, normalize),
            "layer": layer, "normalize": normalize}


def _ref(version: ModelVersion) -> str:
    return f"{version.name}@{version.version}"


def _check_layer_exists(version: ModelVersion, layer: str, settings: Settings) -> None:
    try:
        known = keras_config.layer_graph(version_file(version, settings)).names()
    except (keras_config.KerasConfigError, OSError):
        return  # the worker loads the model and fails the job if the layer (or the file) is not there
    if layer not in known:
        shown = ", ".join(known[:SHOWN_LAYERS]) + (", ..." if len(known) > SHOWN_LAYERS else "")
        raise InvalidRequest(f"model {_ref(version)} has no layer {layer!r}; its layers are {shown}", field="layer")


def _layer_before_head(version: ModelVersion, settings: Settings) -> str:
    try:
        layer = keras_config.layer_before_head(keras_config.layer_graph(version_file(version, settings)))
    except OSError:
        raise Unprocessable(f"cannot read the file of model {_ref(version)}; name the layer to embed with in "
                            "'layer', and the worker checks it", field="layer") from None
    except keras_config.KerasConfigError as exc:
        raise Unprocessable(f"cannot find the layer before the head of model {_ref(version)}: {exc}; name the layer "
                            "to embed with in 'layer'", field="layer") from None
    if names.name_problem(layer, MAX_LAYER_LENGTH) is not None:
        raise Unprocessable(f"the layer before the head of model {_ref(version)} is {layer[:200]!r}, a name an "
                            "embedding space cannot hold; name another layer in 'layer'", field="layer")
    return layer


def embedding_json(job: Job) -> dict:
    """The `embedding` part of an embed job's description."""
    spec = job.spec or {}
    return {"catalog": spec.get("catalog"), "space": spec.get("space"), "layer": spec.get("layer"),
            "normalize": spec.get("normalize"), "dim": spec.get("dim")}
