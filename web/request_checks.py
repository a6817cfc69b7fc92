"""Refusing malformed requests before any handler (or the token check) runs, with the JSON error body:
a URL longer than MAX_URL_BYTES is a 414, a NUL byte in the URL path or in any query parameter a 400
naming it (the database drivers refuse NUL bytes in text, and an id or cursor goes straight to a query).

MAX_URL_BYTES stays under the request line gunicorn accepts (`imgq serve` sets --limit-request-line to its
maximum, 8190), so the app, not gunicorn's HTML page, answers every URL between the two.
"""
from __future__ import annotations

from flask import Flask, request

from shared.core.errors import InvalidRequest, RequestURITooLarge

MAX_URL_BYTES = 4096


def _url_length() -> int:
    environ = request.environ
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")  # as sent: percent-escapes not yet decoded
    if raw:
        return len(raw)
    query = environ.get("QUERY_STRING", "")
    return len(environ.get("SCRIPT_NAME", "")) + len(environ.get("PATH_INFO", "")) + (len(query) + 1 if query else 0)


def check_request() -> None:
    length = _url_length()
    if length > MAX_URL_BYTES:
        raise RequestURITooLarge(f"the URL is {length} bytes; at most {MAX_URL_BYTES}", limit=MAX_URL_BYTES)
    if "\x00" in request.path:
        raise InvalidRequest("the URL path holds a NUL byte (%00)", field="path")
    for key, values in request.args.lists():
        if "\x00" in key or any("\x00" in v for v in values):
            shown = key.replace("\x00", "\\x00")
            raise InvalidRequest(f"query parameter {shown!r} holds a NUL byte (%00)", field=shown)


def register(app: Flask) -> None:
    app.before_request(check_request)
