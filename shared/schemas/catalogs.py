"""Catalog and similar-image requests: index jobs (POST /api/v1/catalogs/<c>/indexes), deletions
(POST /api/v1/catalogs/<c>/deletions), queries (POST /api/v1/similar, /similar/batch) and a thumbnail's size."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from shared.core.names import ModelRef, Name
from shared.core.vocab import IndexMode
from shared.schemas.common import Category, ItemId, SpaceName, Strict
from shared.search.vector_index import BuildParams

MAX_K = 100
MAX_BATCH = 100
MAX_DELETIONS = 10_000
THUMBNAIL_SIZES = (64, 512)  # smallest and largest edge a client may ask for


class IndexRequest(Strict):
    """A build makes a new index version from every vector of the space (with `params`); a delta extends the latest
    version with the items embedded since, keeping that version's parameters. `space` may be left out when the
    catalog has vectors in one space only."""
    mode: IndexMode = "build"
    space: SpaceName | None = None
    params: BuildParams | None = None

    def build_params(self, exact_below: int) -> BuildParams | None:
        """The parameters to build with: the request's, with `exact_below` (IMGQ_EXACT_INDEX_BELOW) unless it set
        its own; None for a delta that gave none."""
        if self.mode == "delta" and self.params is None:
            return None
        params = self.params or BuildParams()
        if "exact_below" in params.model_fields_set:
            return params
        return params.model_copy(update={"exact_below": exact_below})


class DeletionRequest(Strict):
    """Those items leave every answer at once; the next index build purges them."""
    ids: list[ItemId] = Field(min_length=1, max_length=MAX_DELETIONS)


class SimilarQuery(Strict):
    """One query, as POST /api/v1/similar takes it (an uploaded image arrives as `image_base64` from the web
    front's multipart parsing, or from the CLI)."""
    catalog: Name
    k: int = Field(10, ge=1, le=MAX_K)
    space: SpaceName | None = None
    category: Category | None = None
    category_from: ModelRef | None = None  # a classification version whose label is the category
    item_id: ItemId | None = None
    image_uri: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    image_base64: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SimilarQuery:
        given = [n for n in ("item_id", "image_uri", "image_base64") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of item_id, image_uri or an image (upload or image_base64); got "
                             + (", ".join(given) or "none"))
        if self.category is not None and self.category_from is not None:
            raise ValueError("give category or category_from, not both")
        return self


class SimilarBatch(Strict):
    queries: list[SimilarQuery] = Field(min_length=1, max_length=MAX_BATCH)


class ThumbnailQuery(Strict):
    """The query string of GET /api/v1/catalogs/<c>/items/<id>/thumbnail."""
    size: int = Field(160, ge=THUMBNAIL_SIZES[0], le=THUMBNAIL_SIZES[1], description="the longer edge, in pixels")
