"""Small request and response helpers shared by the endpoints."""
from __future__ import annotations

from flask import jsonify, request

from shared.errors import InvalidRequest


def json_object(what: str = "a JSON object") -> dict:
    """The request body as a dict, or a 400 saying what was expected."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be {what}")
    return body


def created(body: dict, location: str, status: int = 201, **headers):
    """A 201 (or 202 for work accepted) with the resource and where it lives."""
    response = jsonify(body)
    response.status_code = status
    response.headers["Location"] = location
    response.headers.update(headers)
    return response
