"""Request bodies, validated with pydantic (extra fields are refused, so typos are caught).

Every string is bounded by its column (or by a small multiple of any sane value), every name follows
shared/core/names.py, and every integer that reaches a column fits it.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.core.names import ModelRef, Name
from shared.models.embedding_space import LayerName
from shared.services.model_registry import MAX_VERSION

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=500)]
Column = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Category = Annotated[str, StringConstraints(min_length=1, max_length=200)]  # job_items.category
MAX_INLINE_ITEMS = 10_000


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: ItemId
    uri: Annotated[str, StringConstraints(min_length=1, max_length=4000)]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: ModelRef
    items: list[Item] | None = Field(default=None, max_length=MAX_INLINE_ITEMS)
    manifest: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = None
    id_column: Column = "id"
    image_column: Column = "image"
    cache: bool = True

    @model_validator(mode="after")
    def _one_source(self):
        return _one_source(self)


def _one_source(request):
    if (request.items is None) == (request.manifest is None):
        raise ValueError("give either 'items' or 'manifest', not both and not neither")
    if request.items is not None and not request.items:
        raise ValueError("'items' is empty")
    return request


class EmbedItem(Item):
    category: Category | None = None


class EmbedRequest(BaseModel):
    """POST /api/v1/jobs/embed as JSON: a score request's items (each with an optional category) or manifest (with
    an optional category column), and the catalog and space the vectors go to. `category_column` named and missing
    from the manifest is a 400; left out, it defaults to "category" when the manifest has that column."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: ModelRef
    catalog: Name
    layer: LayerName | None = None  # default: the model's output (task embedding), else the layer before the head
    normalize: bool = True
    items: list[EmbedItem] | None = Field(default=None, max_length=MAX_INLINE_ITEMS)
    manifest: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = None
    id_column: Column = "id"
    image_column: Column = "image"
    category_column: Column | None = None
    cache: bool = True

    @model_validator(mode="after")
    def _one_source(self):
        return _one_source(self)


class EmbedUploadForm(BaseModel):
    """The text fields of POST /api/v1/jobs/embed as multipart (each file is an item, its id the file name)."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: ModelRef
    catalog: Name
    category: Category | None = None  # for every file of the upload
    layer: LayerName | None = None
    normalize: bool = True
    cache: bool = True


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=MAX_VERSION)


class ModelImportForm(BaseModel):
    """The multipart fields of POST /api/v1/models (the file itself is the `file` part)."""
    model_config = ConfigDict(extra="forbid")
    name: Name
    task: str
    input_size: int | None = Field(default=None, ge=8, le=4096)
    input_height: int | None = Field(default=None, ge=8, le=4096)
    input_width: int | None = Field(default=None, ge=8, le=4096)
    resize_mode: str = "stretch"
    pixel_scale: str = "unit"
    class_names: list[str] | None = None
    output_names: list[str] | None = None
    target_transform: dict = Field(default_factory=lambda: {"kind": "none"})
    description: str | None = None
    promote: bool | None = None

    @model_validator(mode="after")
    def _size(self):
        if self.input_size is None and (self.input_height is None or self.input_width is None):
            raise ValueError("give input_size, or input_height and input_width")
        self.input_height = self.input_height or self.input_size
        self.input_width = self.input_width or self.input_size
        return self
