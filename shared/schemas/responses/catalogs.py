"""Catalogs of vectors and their index versions (shared/services/catalogs.py), a batch deletion's report, and the
answers of similar-image queries (shared/services/similar.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.core.vocab import IndexMode
from shared.schemas.responses.common import FreeForm, NextLink, Resource, Timestamp


class IndexVersion(Resource):
    catalog: str
    space: str
    version: int
    mode: IndexMode
    base_version: int | None = Field(description="a delta: the version it extends")
    items: int
    dim: int
    params: FreeForm = Field(description="the build parameters, and what was built (`built`: per category its size "
                                         "and kind)")
    job_id: str | None
    created_at: Timestamp


class Space(Resource):
    space: str
    items: int = Field(description="live items (not deleted)")
    deleted: int
    last_embedded_at: Timestamp | None
    indexes: list[IndexVersion] = Field(description="the latest index versions, newest first")


class CatalogLinks(Resource):
    self: str


class Catalog(Resource):
    name: str
    spaces: list[Space]
    links: CatalogLinks


class CatalogsPage(Resource):
    catalogs: list[Catalog]
    next: NextLink


class DeletionReport(Resource):
    catalog: str
    requested: int = Field(description="distinct ids asked for")
    found: int = Field(description="ids the catalog has")
    unknown: list[str] = Field(description="ids the catalog never had (at most 100)")
    deleted_rows: int = Field(description="vectors newly marked deleted, over every space")


class QueryShown(Resource):
    """What was asked: an item id, an image path, or an uploaded image's size."""
    item_id: str | None = None
    image_uri: str | None = None
    image: Literal["uploaded"] | None = None
    bytes: int | None = None


class CategoryChosen(Resource):
    value: str
    source: Literal["request", "model", "item"] = Field(description="the caller's category, a classifier's label, "
                                                                    "or the query item's own")
    model: str | None = Field(default=None, description="source model: the classifier")
    confidence: float | None = Field(default=None, description="source model: the label's probability")


class Hit(Resource):
    id: str
    score: float = Field(description="inner product: higher is more similar")
    category: str | None
    thumbnail: str


class SimilarAnswer(Resource):
    catalog: str
    space: str
    index_version: int
    k: int
    query: QueryShown
    category: CategoryChosen | None = Field(description="the category the search was limited to, and why")
    results: list[Hit]


class SimilarAnswers(Resource):
    answers: list[SimilarAnswer]
