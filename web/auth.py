"""Who may call what: bearer tokens checked before every request, one scope per endpoint.

The scope of each endpoint is declared here, in one table; an endpoint missing from it needs
`admin` (closed by default). Only /healthz, /readyz, the API document (/api/v1/openapi.json and its Swagger UI
page) and the dashboard's pages and files are open (a page is a shell holding no data: it fetches the API with the
token the user signed in with, see web/dashboard.py), and /metrics when IMGQ_METRICS_PUBLIC is set. The API
document shows each endpoint's scope from this table (web/openapi.py). Missing or unknown token: 401; token without
the scope: 403; both with the JSON error body. Nothing is authenticated by cookie, so a cross-site form cannot act
for a user.
"""
from __future__ import annotations

import logging

from flask import Flask, current_app, g, request

from shared.core.db import session_scope
from shared.core.errors import Forbidden, Unauthorized
from shared.services import tokens

log = logging.getLogger(__name__)

DASHBOARD_PAGES = {"dashboard.jobs_page", "dashboard.login_page", "dashboard.job_page", "dashboard.models_page",
                   "dashboard.schedules_page", "dashboard.sweep_page", "dashboard.similar_page",
                   "dashboard.operations_page", "dashboard.static"}
OPEN = {"healthz", "readyz", "static", "docs.openapi", "swagger_ui.show", *DASHBOARD_PAGES}
SCOPE_OF = {
    "jobs.create_score_job": "score",
    "jobs.create_embed_job": "score",
    "jobs.create_train_job": "train",
    "jobs.cancel_job": "read",  # and the job's own token, or admin: see shared.services.jobs.cancel_job
    "jobs.list_jobs": "read",
    "jobs.get_job": "read",
    "jobs.get_results": "read",
    "jobs.get_epochs": "read",
    "jobs.get_metrics": "read",  # the deprecated path of get_epochs
    "jobs.get_item_thumbnail": "read",
    "models.list_models": "read",
    "models.list_versions": "read",
    "models.get_version": "read",
    "models.import_model": "admin",
    "models.rollback": "admin",
    "models.set_alias": "admin",
    "datasets.check": "train",
    "sweeps.create_sweep": "train",
    "sweeps.list_sweeps": "read",
    "sweeps.get_sweep": "read",
    "schedules.create_schedule": "train",
    "schedules.list_schedules": "read",
    "schedules.get_schedule": "read",
    "schedules.update_schedule": "train",
    "schedules.delete_schedule": "admin",
    "catalogs.list_catalogs": "read",
    "catalogs.get_catalog": "read",
    "catalogs.get_thumbnail": "read",
    "catalogs.create_index_job": "score",
    "catalogs.delete_items": "score",
    "catalogs.delete_item": "score",
    "catalogs.similar_one": "read",
    "catalogs.similar_batch": "read",
    "uploads.create_upload": "score",  # an upload's files become a score or embed job's items
    "uploads.add_files": "score",  # and only its own token's (or an admin's): see shared.services.uploads
    "uploads.get_upload": "score",
    "uploads.delete_upload": "score",
    "tokens.list_tokens": "admin",
    "tokens.get_me": "read",
    "workers.list_workers": "read",
    "prometheus_metrics": "read",
}


def caller() -> tokens.Caller:
    """The caller of the current request (everything allowed when auth is off)."""
    return g.get("caller", tokens.ANYONE)


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None


def check_request():
    settings = current_app.config["IMGQ_SETTINGS"]
    endpoint = request.endpoint or ""
    if not settings.auth_enabled or endpoint in OPEN or \
            (endpoint == "prometheus_metrics" and settings.metrics_public):
        return None
    if request.endpoint is None:
        return None  # no such route: let Flask answer 404/405
    secret = _bearer()
    if secret is None:
        raise Unauthorized("send an API token: Authorization: Bearer <token> (see `imgq tokens create`)")
    with session_scope() as session:
        who = tokens.authenticate(session, secret)
    if who is None:
        raise Unauthorized("unknown or revoked API token")
    scope = SCOPE_OF.get(endpoint, "admin")
    if not who.may(scope):
        raise Forbidden(f"this token ({who.name}) lacks the '{scope}' scope", scope=scope)
    g.caller = who
    return None


def register(app: Flask) -> None:
    app.before_request(check_request)
    if not app.config["IMGQ_SETTINGS"].auth_enabled:
        log.warning("API authentication is OFF (IMGQ_AUTH=off): anyone who reaches this port may do anything")
