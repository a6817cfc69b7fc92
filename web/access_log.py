"""Each request's id, access line and duration.

The request id is the client's X-Request-ID when it is a plain token (letters, digits, '.', '_', ':', '-'; at most
128), otherwise a new one. It is bound to the log context while the request runs, so every line logged for it carries
it (shared/core/logs.py; a query image sent to a worker takes it along), and it is echoed in the response's
X-Request-ID. When the request ends, one INFO line gives method, route (the Flask endpoint name), status, duration and
request id, and web/metrics.py observes the duration by route, method and status. Nothing from the URL, the headers or
the body is logged: no token, no id a client chose, no control character. /healthz, /readyz and /metrics, polled by
machines, log at DEBUG.

Registered before every other hook, so its clock and request id cover them all.
"""
from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from shared.core import logs
from web import metrics

log = logging.getLogger(__name__)
HEADER = "X-Request-ID"
_PLAIN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
QUIET_ENDPOINTS = frozenset({"healthz", "readyz", "prometheus_metrics"})


def request_id() -> str:
    given = request.headers.get(HEADER, "")
    return given if _PLAIN.fullmatch(given) else uuid.uuid4().hex


def start() -> None:
    g.imgq_started = time.perf_counter()
    g.imgq_request_id = request_id()
    g.imgq_log_token = logs.enter_context(request_id=g.imgq_request_id)


def finish(response: Response) -> Response:
    seconds = time.perf_counter() - g.get("imgq_started", time.perf_counter())
    response.headers[HEADER] = g.get("imgq_request_id") or request_id()
    route, method = request.endpoint or "unmatched", metrics.method_label(request.method)
    metrics.observe_request(route, method, response.status_code, seconds)
    duration_ms = round(seconds * 1000, 1)
    log.log(logging.DEBUG if route in QUIET_ENDPOINTS else logging.INFO, "%s %s %s %.1f ms", method, route,
            response.status_code, duration_ms,
            extra={"method": method, "route": route, "status": response.status_code, "duration_ms": duration_ms})
    return response


def end(_exc) -> None:
    token = g.pop("imgq_log_token", None)
    if token is not None:
        logs.exit_context(token)


def register(app: Flask) -> None:
    app.before_request(start)
    app.after_request(finish)
    app.teardown_request(end)
