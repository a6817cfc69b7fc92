"""Small request and response helpers shared by the endpoints.

A JSON body is read only up to IMGQ_MAX_JSON_BYTES (the Content-Length is checked first, and the stream is
capped for a body sent without one), must parse (nesting deeper than the C parser can take is a 400, not a
RecursionError), is nested at most MAX_JSON_DEPTH deep, and holds no NUL byte in any key or string. Form fields
hold no NUL byte either. Each refusal names where the problem is.

Every JSON answer of a handler goes through `respond` (or `accepted`, `created`): the service's dict is validated
with the response model the API document shows for it (shared/schemas/responses), so what is sent is what is
documented; a dict that does not fit is a fault of the server (a 500, logged), never a client's 400.
"""
from __future__ import annotations

import json

from flask import Response, current_app, request
from pydantic import BaseModel, ValidationError

from shared.core.errors import InvalidRequest, RequestEntityTooLarge
from shared.services.submission import Origin
from web.auth import caller

MAX_JSON_DEPTH = 64
_BLOCK = 1 << 16


def json_object(what: str = "a JSON object") -> dict:
    """The request body as a dict, or a 400 saying what was expected (413 over IMGQ_MAX_JSON_BYTES)."""
    if not request.is_json:
        raise InvalidRequest(f"the body must be {what}")
    try:
        body = json.loads(_body_bytes(current_app.config["IMGQ_SETTINGS"].max_json_bytes))
    except RecursionError:
        raise InvalidRequest(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of thousands of digits
        raise InvalidRequest(f"the body must be {what} ({exc})") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be {what}")
    check_tree(body)
    return body


def _body_bytes(limit: int) -> bytes:
    """The body, read in blocks and never more than `limit` + 1 bytes of it."""
    length = request.content_length
    if length is not None and length > limit:
        raise RequestEntityTooLarge(f"the JSON body is {length} bytes; at most {limit} (IMGQ_MAX_JSON_BYTES); "
                              "send more items as a manifest", limit=limit)
    blocks, total = [], 0
    while True:
        block = request.stream.read(min(_BLOCK, limit + 1 - total))
        if not block:
            return b"".join(blocks)
        blocks.append(block)
        total += len(block)
        if total > limit:
            raise RequestEntityTooLarge(f"the JSON body is over {limit} bytes (IMGQ_MAX_JSON_BYTES); "
                                  "send more items as a manifest", limit=limit)


def _dotted(path: tuple) -> str:
    return ".".join(str(p).replace("\x00", "\\x00") for p in path) or "body"


def check_tree(value, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse nesting deeper than `max_depth` and NUL bytes in any key or string, naming the place
    (e.g. `items.3.id`). Iterative: no recursion however deep the value."""
    stack = [(value, (), 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                raise InvalidRequest(f"{_dotted(path)}: NUL bytes are not allowed", field=_dotted(path))
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > max_depth:
            raise InvalidRequest(f"the JSON body is nested more than {max_depth} levels deep (at {_dotted(path)})",
                                 field=_dotted(path))
        if isinstance(node, dict):
            for key, child in node.items():
                if "\x00" in key:
                    raise InvalidRequest(f"{_dotted(path + (key,))}: NUL bytes are not allowed in keys",
                                         field=_dotted(path + (key,)))
                stack.append((child, path + (key,), depth + 1))
        else:
            stack.extend((child, path + (i,), depth + 1) for i, child in enumerate(node))


def refuse_nul(value: str | None, field: str) -> None:
    if value and "\x00" in value:
        raise InvalidRequest(f"{field}: NUL bytes are not allowed", field=field)


def form_fields() -> dict[str, str]:
    """The multipart or urlencoded text fields (the first value of each), none holding a NUL byte."""
    fields = request.form.to_dict()
    for key, value in fields.items():
        refuse_nul(key, "form field name")
        refuse_nul(value, key)
    return fields


MAX_IDEMPOTENCY_KEY = 200  # jobs.idempotency_key, sweeps.idempotency_key


def origin() -> Origin:
    """Who submits the current request's jobs: the caller's token, its cap on active jobs, and the request's
    Idempotency-Key header (at most 200 characters, no NUL byte). Every job-creating endpoint reads it here."""
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(f"Idempotency-Key must be at most {MAX_IDEMPOTENCY_KEY} characters",
                             field="Idempotency-Key")
    refuse_nul(key, "Idempotency-Key")
    return Origin(token_id=caller().token_id, max_active_jobs=current_app.config["IMGQ_SETTINGS"].max_active_jobs,
                  idempotency_key=key)


class AnswerMismatch(RuntimeError):
    """A service's answer that its response model refuses: the server's fault (web/errors.py: a 500)."""


def respond(model: type[BaseModel], body, status: int = 200, **headers) -> Response:
    """`body` (a service's dict) as the JSON answer `model` describes: validated, then written as the service wrote
    it (a key it left out stays out; shared/schemas/responses/common.Timestamp keeps timestamps as written)."""
    try:
        answer = model.model_validate(body)
    except ValidationError as exc:
        raise AnswerMismatch(f"the answer does not fit {model.__name__}: {exc}") from exc
    # serialized by pydantic-core straight to JSON: faster than jsonify of the dict (benchmarks/response_validation.py)
    return Response(answer.model_dump_json(exclude_unset=True), status, headers, mimetype="application/json")


def accepted(model: type[BaseModel], body: dict, new: bool, location: str | None = None) -> Response:
    """202 with what a submission made (a job, a sweep) and its Location; a repeated Idempotency-Key answers the
    same, saying it is a replay (Idempotent-Replayed: true)."""
    replay = {} if new else {"Idempotent-Replayed": "true"}
    return created(model, body, location or body["links"]["self"], 202, **replay)


def created(model: type[BaseModel], body: dict, location: str, status: int = 201, **headers) -> Response:
    """A 201 (or 202 for work accepted) with the resource and where it lives."""
    return respond(model, body, status, Location=location, **headers)
