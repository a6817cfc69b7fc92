"""Lists over HTTP: the query string of every list, parsed by one pydantic model per list, and one page body.

Every list takes `limit` (1 to MAX_LIMIT, default DEFAULT_LIMIT) and `after`, an opaque cursor: the previous page's
`next` link carries it, and a client never builds one. A list answers `{"<plural>": [...], "next": <relative URL
of the next page, with the same limit and filters> | null}`; `next` is null on the last page. The services page by
keys (shared/core/keyset.py); a cursor here is those keys as URL-safe base64 of a JSON list.

An unknown query parameter, a parameter given twice, a filter value outside its vocabulary (shared/core/states.py,
shared/core/vocab.py), a limit out of range or a cursor this list did not make is a 400 naming the parameter.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime
from typing import Literal, TypeVar
from urllib.parse import urlencode

from flask import request
from pydantic import BaseModel, ConfigDict, Field

from shared.core.errors import InvalidRequest
from shared.core.keyset import Key
from shared.core.names import ModelRef
from shared.core.states import JobKind, JobStatus
from shared.core.vocab import ResultStatus
from shared.services import workers

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR_LENGTH = 2000  # an item id (500 characters) as base64 of JSON, with room to spare

Query = TypeVar("Query", bound="PageQuery")


class PageQuery(BaseModel):
    """The query string of a list without filters (models, versions, schedules, sweeps, catalogs, tokens)."""
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="rows per page")
    after: str | None = Field(default=None, min_length=1, max_length=MAX_CURSOR_LENGTH,
                              description="an opaque cursor: take it from the previous page's `next` link")


class JobsQuery(PageQuery):
    """GET /api/v1/jobs"""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    status: JobStatus | None = None
    kind: JobKind | None = None
    model: ModelRef | None = Field(default=None, description="score and embed jobs by the model they use, train and "
                                                             "import jobs by the name they make")


class ResultsQuery(PageQuery):
    """GET /api/v1/jobs/<id>/results (format=csv or parquet streams every result: limit, after and status apply to
    JSON pages)"""
    status: ResultStatus | None = None
    format: Literal["json", "csv", "parquet"] = Field(default="json", description="csv or parquet: every result, "
                                                                                  "streamed, no pages")


class WorkersQuery(PageQuery):
    """GET /api/v1/workers"""
    seen_within: int = Field(default=workers.DEFAULT_SEEN_WITHIN, ge=1, le=workers.MAX_SEEN_WITHIN,
                             description="seconds: the workers that reported themselves this recently")


def parse_query(model: type[Query]) -> Query:
    """The request's query string as `model` (a 400 naming the parameter when it does not fit)."""
    for name, values in request.args.lists():
        if len(values) > 1:
            raise InvalidRequest(f"query parameter {name} is given {len(values)} times; give it once", field=name)
    return model.model_validate(request.args.to_dict())


def encode_cursor(key: Key) -> str:
    values = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def _instant(value) -> datetime:
    instant = datetime.fromisoformat(value)
    if instant.tzinfo is None:
        raise ValueError("a cursor's time has its offset")
    return instant


def _exact(kind: type) -> Callable:
    def check(value):
        if type(value) is not kind:
            raise ValueError(f"expected {kind.__name__}")
        return value
    return check


PARTS: dict[type, Callable] = {datetime: _instant, str: _exact(str), int: _exact(int)}


def decode_cursor(after: str | None, *parts: type) -> Key | None:
    """The key an `after` cursor holds, its parts of the types given (None without a cursor)."""
    if after is None:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)))
        if not isinstance(values, list) or len(values) != len(parts):
            raise ValueError("not a key of this list")
        return tuple(PARTS[kind](value) for kind, value in zip(parts, values))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidRequest("after must be the cursor of a `next` link this list gave", field="after") from None


def page_body(plural: str, rows: list, next_key: Key | None, query: PageQuery, **extra) -> dict:
    """{**extra, plural: rows, "next": the next page's URL (this path, the same limit and filters) or None}."""
    following = None
    if next_key is not None:
        given = query.model_dump(mode="json", include=query.model_fields_set - {"limit", "after"}, exclude_none=True)
        following = f"{request.path}?{urlencode({**given, 'limit': query.limit, 'after': encode_cursor(next_key)})}"
    return {**extra, plural: rows, "next": following}
