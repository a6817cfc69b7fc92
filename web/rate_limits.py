"""Per-token request rates with flask-limiter: Redis storage in production (shared by every web process),
in memory on the embedded default. A request over the rate gets 429 with Retry-After and the JSON error
body (web/errors.py). Open endpoints (/healthz, /readyz, /metrics) are not limited."""
from __future__ import annotations

from flask import Flask, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from shared.core.config import Settings

UNLIMITED = {"healthz", "readyz", "prometheus_metrics"}


def _key() -> str:
    caller = g.get("caller")
    if caller is not None and caller.token_id is not None:
        return f"token:{caller.token_id}"
    return f"ip:{get_remote_address()}"


def _exempt() -> bool:
    return request.endpoint in UNLIMITED


def register(app: Flask, settings: Settings) -> Limiter:
    """Call after web.auth.register: the key is the token the auth check found."""
    options = {}
    if settings.limiter_storage.startswith(("redis://", "rediss://")):
        prefix = settings.broker_transport_options.get("global_keyprefix", "")
        options = {"key_prefix": f"{prefix}imgq-limits"}
    return Limiter(_key, app=app, default_limits=[settings.rate_limit], default_limits_exempt_when=_exempt,
                   storage_uri=settings.limiter_storage, storage_options=options, headers_enabled=True,
                   strategy="moving-window", swallow_errors=True)
