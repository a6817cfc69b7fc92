"""The Flask application factory: the web front on the Settings it is given, which also name the database its
sessions use and the broker it sends tasks to (one configuration per process)."""
from __future__ import annotations

from flask import Flask
from prometheus_client import CONTENT_TYPE_LATEST

from shared.core import celery_app, db, dispatch, liveness
from shared.core.config import Settings, ensure_dirs
from shared.core.db import session_scope
from shared.schemas.responses.common import Error, Health, Readiness
from shared.services import similar
from web import (
    access_log,
    api_catalogs,
    api_datasets,
    api_docs,
    api_jobs,
    api_models,
    api_tokens,
    api_training,
    api_uploads,
    api_workers,
    auth,
    dashboard,
    errors,
    metrics,
    rate_limits,
    request_checks,
)
from web.http import respond
from web.openapi import TEXT, documented


def create_app(settings: Settings) -> Flask:
    ensure_dirs(settings)
    db.configure(settings)
    celery_app.configure(settings)
    app = Flask("imgq")
    app.config["IMGQ_SETTINGS"] = settings
    app.config["IMGQ_INDEXES"] = similar.new_holder(settings)  # catalogs' vector indexes, loaded on first query
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False
    access_log.register(app)  # first: its request id and clock cover every other hook
    errors.register(app)
    request_checks.register(app)  # URL length and NUL bytes, before anything reads the request
    auth.register(app)
    rate_limits.register(app, settings)
    app.register_blueprint(api_jobs.bp)
    app.register_blueprint(api_models.bp)
    app.register_blueprint(api_datasets.bp)
    app.register_blueprint(api_training.sweeps_bp)
    app.register_blueprint(api_training.schedules_bp)
    app.register_blueprint(api_catalogs.bp)
    app.register_blueprint(api_tokens.bp)
    app.register_blueprint(api_workers.bp)
    app.register_blueprint(api_uploads.bp)
    app.register_blueprint(dashboard.bp)  # the HTML pages under /
    api_docs.register(app)

    @app.get("/healthz")
    @documented("The web front and its database answer", responses={200: Health})
    def healthz():
        with session_scope() as session:
            db.ping(session)
        return respond(Health, {"status": "ok"})

    @app.get("/readyz")
    @documented("Ready to take work: database, broker, and a recent sweep",
                responses={200: Readiness, 503: (Readiness, Error)},
                description="503 with the readiness report when a part is down (the Error shape if the database "
                            "cannot even be asked).")
    def readyz():
        broker_ok = dispatch.broker_reachable()
        with session_scope() as session:
            report = liveness.readiness(session, settings, broker_ok)
        return respond(Readiness, report, 200 if report["ready"] else 503)

    @app.get("/metrics")
    @documented("Prometheus metrics", responses={200: {"text/plain": TEXT}},
                description="The Prometheus text format; open when IMGQ_METRICS_PUBLIC is set.")
    def prometheus_metrics():
        return metrics.render(), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    return app
