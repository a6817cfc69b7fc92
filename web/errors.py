"""The one place that maps errors to HTTP responses: always JSON, always saying what is wrong, in one shape.

Every error body, whatever raised it (an ImgqError, a pydantic ValidationError, werkzeug, the database), is
`{"error": {"type": <class name>, "message": ..., "problems": [{"field": <dotted path>, "message": ...}], ...}}`:
`problems` is always there (empty when no one field is at fault); an ImgqError's `field=` becomes its one problem,
and its other details (retry_after, limit, scope, ...) sit beside `message`.

A database error that a request can still provoke past validation (a value the column refuses, a row that
conflicts with a concurrent one) is the last line of defence: a 4xx with a generic message that names no
table, column, value or server detail; the detail goes to the log.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from pydantic import ValidationError
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from werkzeug.exceptions import HTTPException, default_exceptions

from shared.core.errors import ImgqError, TooManyRequests

log = logging.getLogger(__name__)


def error_body(status: int, kind: str, message: str, problems: list[dict] | None = None, **details):
    body = {"error": {"type": kind, "message": message, "problems": problems or [], **details}}
    return jsonify(body), status


def _field_path(loc) -> str:
    return ".".join(str(p) for p in loc) or "body"


def register(app: Flask) -> None:
    # the request checks raise errors mapped here; registered first, they run before any other hook

    @app.errorhandler(ImgqError)
    def _imgq(exc: ImgqError):
        details = dict(exc.details)
        field = details.pop("field", None)
        problems = [{"field": str(field), "message": exc.message}] if field is not None else []
        response, status = error_body(exc.http_status, type(exc).__name__, exc.message, problems, **details)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response, status

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError):
        problems = [{"field": _field_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        first = problems[0] if problems else {"field": "body", "message": "invalid"}
        return error_body(400, "InvalidRequest", f"{first['field']}: {first['message']}", problems)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        # werkzeug's name for the status (RateLimitExceeded is a TooManyRequests): one vocabulary
        kind = default_exceptions.get(exc.code, type(exc)).__name__
        response, status = error_body(exc.code or 500, kind, exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. a 405's Allow; the body's own type stays JSON
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response, status

    @app.errorhandler(DataError)
    def _bad_value(exc: DataError):
        log.warning("a request gave the database a value it refuses: %s", exc.orig)
        return error_body(400, "InvalidRequest", "a value in the request does not fit the database "
                          "(too long, out of range, or holding a NUL byte)")

    @app.errorhandler(OverflowError)
    def _out_of_range(exc: OverflowError):
        # SQLite's driver raises it (not a DBAPI error) for an integer beyond 64 bits
        log.warning("a request gave a number out of range: %s", exc)
        return error_body(400, "InvalidRequest", "a number in the request is out of range")

    @app.errorhandler(IntegrityError)
    def _conflict(exc: IntegrityError):
        log.warning("a request conflicts with stored rows: %s", exc.orig)
        return error_body(409, "Conflict", "the request conflicts with data stored meanwhile; retry it")

    @app.errorhandler(OperationalError)
    def _db_down(exc: OperationalError):
        log.error("database unavailable: %s", exc)
        return error_body(503, "ServiceUnavailable", "the database is unavailable; retry later")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_body(500, "InternalError", "internal error; see the server log")
