"""Embedding spaces: the one name for where a vector lives, and its parsing. Embed jobs write it to
`embeddings.space`; index and query code read it back with `parse_space`.

A space is a model version, the layer read, and whether vectors are L2-normalised, written
`<model name>@<version>[#<layer>][~raw]`:
- `catalog-embedder@3`: the output of version 3 of a model registered with task `embedding`, L2-normalised;
- `category-model@2#dense_1`: the output of layer `dense_1` of version 2 (a model of any task), L2-normalised;
- `category-model@2#dense_1~raw`: the same layer's vectors as the model gives them.
An embed job on a model that is not an `embedding` model always names its layer: the default one (the layer before
the head, shared/models/keras_config.py) is resolved when the job is submitted, so the same vectors asked for by
default or by the layer's name land in one space.

Invariants: one (model, version, layer, normalise) has exactly one name, and `parse_space(space_name(...))` gives
it back. Model and layer names follow shared/core/names.py (a layer at most MAX_LAYER_LENGTH characters), so a
space holds only those characters and '@', '#', '~': it names a file or folder as it is, and fits a URL path segment
once '#' is percent-escaped. '~raw' rather than '/raw': a '/' would make a folder and split a URL path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from shared.core import names
from shared.core.errors import InvalidRequest
from shared.core.tables import MAX_INT32

MAX_LAYER_LENGTH = 150  # name 100 + '@' + version 10 + '#' + layer + '~raw' stays within embeddings.space (300)
RAW_SUFFIX = "~raw"
_SPACE = re.compile(r"(?P<model>[^@#~]+)@(?P<version>[0-9]+)(?:#(?P<layer>[^@#~]+))?(?P<raw>~raw)?")


@dataclass(frozen=True)
class EmbeddingSpace:
    model: str
    version: int
    layer: str | None = None  # None: the model's own output (a model registered with task `embedding`)
    normalize: bool = True

    @property
    def name(self) -> str:
        return space_name(self.model, self.version, self.layer, self.normalize)

    @property
    def model_ref(self) -> str:
        """The model version as a model reference (shared/services/model_registry.resolve takes it)."""
        return f"{self.model}@{self.version}"


def _check_version(version, field: str) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_INT32:
        raise InvalidRequest(f"{field}: a version is a whole number from 1 to {MAX_INT32}", field=field)
    return version


def check_layer(value, field: str = "layer") -> str:
    """`value` if it can name a layer in a space, else InvalidRequest naming `field`."""
    return names.check_name(value, field, MAX_LAYER_LENGTH)


def space_name(model: str, version: int, layer: str | None, normalize: bool) -> str:
    names.check_name(model, "model")
    _check_version(version, "version")
    if layer is not None:
        check_layer(layer)
    return f"{model}@{version}{'' if layer is None else '#' + layer}{'' if normalize else RAW_SUFFIX}"


def parse_space(space: str, field: str = "space") -> EmbeddingSpace:
    """The parts of a space name, or InvalidRequest naming `field`."""
    match = _SPACE.fullmatch(space) if isinstance(space, str) and len(space) <= 300 else None
    if match is None:
        raise InvalidRequest(f"{field} must read <model>@<version>[#<layer>][{RAW_SUFFIX}], e.g. "
                             "'catalog-embedder@3' or 'category-model@2#dense_1'", field=field)
    names.check_name(match["model"], field)
    layer = match["layer"]
    if layer is not None:
        check_layer(layer, field)
    version = int(match["version"]) if len(match["version"]) <= 10 else 0
    return EmbeddingSpace(match["model"], _check_version(version, field), layer, normalize=match["raw"] is None)


def _pydantic_layer(value: str) -> str:
    problem = names.name_problem(value, MAX_LAYER_LENGTH)
    if problem:
        raise ValueError(f"{problem} (pattern {names.pattern_for(MAX_LAYER_LENGTH)})")
    return value


LayerName = Annotated[str, StringConstraints(max_length=MAX_LAYER_LENGTH), AfterValidator(_pydantic_layer)]
