"""What every answer shares: the strict base of response models, timestamps, the one error body, pages; and the
small answers of the service itself (health, readiness), of API tokens and of the worker processes seen."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from shared.core.vocab import WorkerRole

# parsed when validated, written back as the services wrote it: validation never changes the wire
Timestamp = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str, when_used="json"),
                      WithJsonSchema({"type": "string", "format": "date-time"})]
FreeForm = dict[str, object]  # a JSON object whose keys the model does not fix (described where it is used)
NextLink = Annotated[str | None, Field(description="the next page: this path with the same limit and filters and an "
                                                   "opaque `after` cursor; null on the last page")]


class Resource(BaseModel):
    """A response body, key for key: a key the model does not name is an error, not a silent extra."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Problem(Resource):
    field: str = Field(description="dotted path of the field at fault: `items.0.uri`, a query parameter, "
                                   "`Idempotency-Key`...")
    message: str


class ErrorDetail(BaseModel):
    """Other details sit beside `message`, named by the error (a 429's retry_after, limit and active; a 403's scope;
    a 413's limit; ...)."""
    model_config = ConfigDict(extra="allow")
    type: str = Field(description="InvalidRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict, "
                                  "RequestEntityTooLarge, RequestURITooLarge, Unprocessable, TooManyRequests, "
                                  "ServiceUnavailable or InternalError")
    message: str
    problems: list[Problem] = Field(description="one entry per field at fault; empty when no one field is")
    retry_after: int | None = Field(default=None, description="429: seconds to wait (also the Retry-After header)")
    limit: int | None = Field(default=None, description="413: the size limit in bytes; 429 over the active-job cap: "
                                                        "the cap")
    active: int | None = Field(default=None, description="429 over the active-job cap: the token's active jobs")
    scope: str | None = Field(default=None, description="403: the scope the token lacks")


class Error(Resource):
    """The one body of every 4xx and 5xx answer."""
    error: ErrorDetail


class Health(Resource):
    status: Literal["ok"]


class Readiness(Resource):
    ready: bool
    problems: list[str]
    database: Literal["ok"]
    broker: Literal["ok", "unreachable"]
    sweeper_age_seconds: float | None = Field(description="seconds since the sweeper last ran; null if never")


class TokenSelf(Resource):
    """The calling token (GET /api/v1/tokens/me): what it may do; no secret."""
    id: int | None = Field(description="null when authentication is off")
    name: str
    scopes: list[str] = Field(description="read, score, train, admin")


class Token(Resource):
    """An API token as listed: never its secret (not stored) nor its hash."""
    id: int
    name: str
    scopes: list[str] = Field(description="read, score, train, admin")
    created_at: Timestamp | None
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None


class TokensPage(Resource):
    tokens: list[Token]
    next: NextLink


class WorkerSeen(Resource):
    """A worker process as it last reported itself (every few seconds while it runs)."""
    name: str = Field(description="its Celery node name: role, pid and host")
    hostname: str
    pid: int
    role: WorkerRole = Field(description="worker: scoring, training and queries; maintenance: the sweeper, "
                                         "schedules, imports and index builds")
    queues: list[str]
    started_at: Timestamp
    last_seen_at: Timestamp
    current_jobs: list[str] = Field(description="the jobs whose score chunks or training it holds now")


class WorkersPage(Resource):
    workers: list[WorkerSeen]
    next: NextLink
