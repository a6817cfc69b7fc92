"""Score and embed requests: POST /api/v1/jobs/score and /api/v1/jobs/embed, as JSON (items, a manifest, or an upload
sent in parts) or as multipart (the files are the items; these models are the form's text fields); and the form of
a part of an upload (POST /api/v1/uploads/<id>/files).

Every string is bounded by its column (or by a small multiple of any sane value), every name follows
shared/core/names.py.
"""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from shared.core.names import ModelRef, Name
from shared.core.paths import is_object_uri
from shared.models.embedding_space import LayerName
from shared.schemas.common import Category, Column, ItemId, Strict, Uri

MAX_INLINE_ITEMS = 10_000
UploadId = Annotated[str, StringConstraints(min_length=1, max_length=32),
                     Field(description="an upload's id (POST /api/v1/uploads): its files are the items, their names "
                                       "the ids")]
EXPORT_FORMATS = ("parquet", "csv")  # an export's file format, from its URI's extension
EXPORT_PLACEHOLDER = "{job_id}"


def _export_template(value: str) -> str:
    """An export URI as the client writes it: `s3://bucket/key.parquet` or `.csv`, `{job_id}` its only placeholder
    (whether its prefix is allowed is decided with the settings, shared/services/job_exports.py)."""
    if not is_object_uri(value):
        raise ValueError("an export is an object-store URI (s3://, az://...) under IMGQ_EXPORT_ROOTS")
    other = re.sub(re.escape(EXPORT_PLACEHOLDER), "", value)
    if "{" in other or "}" in other:
        raise ValueError(f"{EXPORT_PLACEHOLDER} is the only placeholder an export URI may hold")
    if not value.endswith(tuple("." + f for f in EXPORT_FORMATS)):
        raise ValueError(f"an export URI ends in {' or '.join('.' + f for f in EXPORT_FORMATS)}")
    return value


EXPORT_DESCRIPTION = ("where the job's results are written when it succeeds: `s3://bucket/prefix/{job_id}.parquet` "
                      "(or `.csv`), under IMGQ_EXPORT_ROOTS; `{job_id}` is the only placeholder")
ExportUri = Annotated[str, StringConstraints(min_length=6, max_length=1000), AfterValidator(_export_template)]


class Item(Strict):
    id: ItemId
    uri: Uri


class ScoreRequest(Strict):
    """POST /api/v1/jobs/score as JSON: one of `items`, a `manifest` (a file under the data roots) or an `upload`
    (sent in parts)."""
    model: ModelRef
    items: list[Item] | None = Field(default=None, max_length=MAX_INLINE_ITEMS)
    manifest: Uri | None = None
    upload: UploadId | None = None
    id_column: Column = "id"
    image_column: Column = "image"
    cache: bool = True
    export: ExportUri | None = Field(default=None, description=EXPORT_DESCRIPTION)

    @model_validator(mode="after")
    def _one_source(self):
        return _one_source(self)


def _one_source(request):
    if sum(source is not None for source in (request.items, request.manifest, request.upload)) != 1:
        raise ValueError("give either 'items' or 'manifest' or 'upload': one of them, not both and not neither")
    if request.items is not None and not request.items:
        raise ValueError("'items' is empty")
    return request


class ScoreUploadForm(Strict):
    """The text fields of POST /api/v1/jobs/score as multipart (each file is an item, its id the file name)."""
    model: ModelRef
    cache: bool = True


class EmbedItem(Item):
    category: Category | None = None


class EmbedRequest(Strict):
    """POST /api/v1/jobs/embed as JSON: a score request's items (each with an optional category), manifest (with
    an optional category column) or upload (with one optional `category` for all its files), and the catalog and
    space the vectors go to. `category_column` named and missing from the manifest is a 400; left out, it defaults
    to "category" when the manifest has that column."""
    model: ModelRef
    catalog: Name
    layer: LayerName | None = None  # default: the model's output (task embedding), else the layer before the head
    normalize: bool = True
    items: list[EmbedItem] | None = Field(default=None, max_length=MAX_INLINE_ITEMS)
    manifest: Uri | None = None
    id_column: Column = "id"
    image_column: Column = "image"
    category_column: Column | None = None
    upload: UploadId | None = None
    category: Category | None = Field(default=None, description="with `upload`: the category of all its files")
    cache: bool = True
    export: ExportUri | None = Field(default=None, description=EXPORT_DESCRIPTION)

    @model_validator(mode="after")
    def _one_source(self):
        if self.category is not None and self.upload is None:
            raise ValueError("'category' goes with 'upload' (items carry their own, a manifest its column)")
        return _one_source(self)


class EmbedUploadForm(Strict):
    """The text fields of POST /api/v1/jobs/embed as multipart (each file is an item, its id the file name)."""
    model: ModelRef
    catalog: Name
    category: Category | None = None  # for every file of the upload
    layer: LayerName | None = None
    normalize: bool = True
    cache: bool = True


class UploadPartForm(Strict):
    """POST /api/v1/uploads/<id>/files: no text fields; the files are the part (each named by its item id)."""
