"""One error body for every 4xx and 5xx of every endpoint, through the app factory on SQLite and PostgreSQL:
{"error": {"type", "message", "problems": [{"field", "message"}], ...details}}, whether the error is imgq's own
(with `field=` or without), a pydantic validation error, werkzeug's (405, a multipart body over the limit),
flask-limiter's, or unexpected; the field at fault is always problems[0].field, never error.field."""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest

from shared.core.db import session_scope
from shared.core.tables import Schedule
from shared.services import jobs, tokens
from tests.helpers import assert_error, seed_embeddings, seed_version
from web.app import create_app

JOB = "00000000-0000-0000-0000-000000000000"
TRAIN = {"model": "cats", "task": "classification", "input_size": 32, "epochs": 1,
         "dataset": {"path": "cats/items.csv", "label_column": "label"}, "base": {"architecture": "vgg"}}
LIMITS = dict(auth_enabled=True, metrics_public=False, max_json_bytes=4096, max_upload_bytes=64 * 1024,
              max_active_jobs=1)


@dataclass(frozen=True)
class Case:
    endpoint: str
    send: Callable  # (ctx) -> response
    status: int
    kind: str
    field: str | None = None


def _token(scopes: str) -> dict:
    with session_scope() as session:
        row, secret = tokens.create_token(session, f"t-{scopes}", scopes)
        return {"id": row.id, "headers": {"Authorization": f"Bearer {secret}"}}


@pytest.fixture
def ctx(configured, monkeypatch):
    """The app (auth on, small body limits, a cap of one active job), tokens by role, and the rows the cases need:
    models, a catalog, a schedule, and a job of alice's that fills her cap."""
    seed_version("scorer")
    seed_embeddings("shop", seed_version("embedder", task="embedding"), "embedder@1", 3)
    by_role = {role: _token(scopes) for role, scopes in
               {"admin": "admin", "read": "read", "train": "train", "alice": "score,read", "bob": "score,read"}.items()}
    with session_scope() as session:
        schedule = Schedule(name="nightly", cron="0 2 * * *", timezone="UTC", model_name="cats", train={}, gate={})
        session.add(schedule)
        alice_job = jobs.create_score_job(session, model_ref="scorer", pieces=[[("a", "a.jpg")]],
                                          source={"type": "items"}, use_cache=True, chunk_size=10,
                                          token_id=by_role["alice"]["id"])
        session.flush()
        ids = {"schedule": schedule.id, "alice_job": alice_job.id}
    settings = replace(configured, **LIMITS)
    client = create_app(settings).test_client()

    def call(method: str, url: str, role: str | None = "admin", **kw):
        headers = {**(by_role[role]["headers"] if role else {}), **kw.pop("headers", {})}
        return client.open(url, method=method, headers=headers, **kw)

    def app_with(**overrides):
        return create_app(replace(settings, **overrides)).test_client()

    return SimpleNamespace(call=call, ids=ids, app_with=app_with, admin=by_role["admin"]["headers"],
                           monkeypatch=monkeypatch)


def _upload(**fields) -> dict:
    return {"data": fields, "content_type": "multipart/form-data"}


def _rate_limited(ctx):
    client = ctx.app_with(rate_limit="1 per minute")
    client.get("/api/v1/jobs", headers=ctx.admin)
    return client.get("/api/v1/jobs", headers=ctx.admin)


def _key_reused(ctx):
    assert ctx.call("POST", "/api/v1/jobs/train", json=TRAIN, headers={"Idempotency-Key": "k"}).status_code == 202
    return ctx.call("POST", "/api/v1/jobs/train", json={**TRAIN, "epochs": 2}, headers={"Idempotency-Key": "k"})


def _new_upload(ctx, role: str = "admin", *names: str) -> str:
    upload = ctx.call("POST", "/api/v1/uploads", role=role).json["id"]
    if names:
        _part(ctx, upload, role, dict.fromkeys(names, b"x"))
    return upload


def _part(ctx, upload: str, role: str, files: dict[str, bytes]):
    return ctx.call("POST", f"/api/v1/uploads/{upload}/files", role=role,
                    **_upload(files=[(io.BytesIO(data), name) for name, data in files.items()]))


def _taken_upload(ctx) -> str:
    """bob's upload, which his score job took (bob's one active job: the cap is one)."""
    upload = _new_upload(ctx, "bob", "a.jpg")
    assert ctx.call("POST", "/api/v1/jobs/score", role="bob", json={"model": "scorer", "upload": upload}
                    ).status_code == 202
    return upload


def _unexpected(ctx):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    ctx.monkeypatch.setattr(jobs, "get_job", broken)
    return ctx.call("GET", f"/api/v1/jobs/{JOB}")


CASES = {
    # 401, 403
    "no-token": Case("jobs.list_jobs", lambda c: c.call("GET", "/api/v1/jobs", role=None), 401, "Unauthorized"),
    "metrics-no-token": Case("prometheus_metrics", lambda c: c.call("GET", "/metrics", role=None), 401,
                             "Unauthorized"),
    "tokens-read-scope": Case("tokens.list_tokens", lambda c: c.call("GET", "/api/v1/tokens", role="read"), 403,
                              "Forbidden"),
    "delete-schedule-train-scope": Case("schedules.delete_schedule", lambda c: c.call(
        "DELETE", f"/api/v1/schedules/{c.ids['schedule']}", role="train"), 403, "Forbidden"),
    "upload-read-scope": Case("uploads.create_upload", lambda c: c.call("POST", "/api/v1/uploads", role="read"),
                              403, "Forbidden"),
    "anothers-upload": Case("uploads.get_upload", lambda c: c.call(
        "GET", f"/api/v1/uploads/{_new_upload(c, 'alice')}", role="bob"), 403, "Forbidden"),
    "part-to-anothers-upload": Case("uploads.add_files", lambda c: _part(c, _new_upload(c, "alice"), "bob",
                                                                         {"a.jpg": b"x"}), 403, "Forbidden"),
    "delete-anothers-upload": Case("uploads.delete_upload", lambda c: c.call(
        "DELETE", f"/api/v1/uploads/{_new_upload(c, 'alice')}", role="bob"), 403, "Forbidden"),
    "score-anothers-upload": Case("jobs.create_score_job", lambda c: c.call(
        "POST", "/api/v1/jobs/score", json={"model": "scorer", "upload": _new_upload(c, "alice", "a.jpg")},
        role="bob"), 403, "Forbidden", "upload"),
    "cancel-anothers-job": Case("jobs.cancel_job", lambda c: c.call(
        "POST", f"/api/v1/jobs/{c.ids['alice_job']}/cancel", role="bob"), 403, "Forbidden"),
    # 404
    "job": Case("jobs.get_job", lambda c: c.call("GET", f"/api/v1/jobs/{JOB}"), 404, "NotFound"),
    "epochs": Case("jobs.get_epochs", lambda c: c.call("GET", f"/api/v1/jobs/{JOB}/epochs"), 404, "NotFound"),
    "metrics": Case("jobs.get_metrics", lambda c: c.call("GET", f"/api/v1/jobs/{JOB}/metrics"), 404, "NotFound"),
    "versions": Case("models.list_versions", lambda c: c.call("GET", "/api/v1/models/nope/versions"), 404,
                     "NotFound"),
    "version": Case("models.get_version", lambda c: c.call("GET", "/api/v1/models/scorer/versions/9"), 404,
                    "NotFound"),
    "sweep": Case("sweeps.get_sweep", lambda c: c.call("GET", "/api/v1/sweeps/nope"), 404, "NotFound"),
    "schedule": Case("schedules.get_schedule", lambda c: c.call("GET", "/api/v1/schedules/999"), 404, "NotFound"),
    "catalog": Case("catalogs.get_catalog", lambda c: c.call("GET", "/api/v1/catalogs/nowhere"), 404, "NotFound"),
    "catalog-item": Case("catalogs.delete_item", lambda c: c.call("DELETE", "/api/v1/catalogs/shop/items/nope"), 404,
                         "NotFound"),
    "index-without-vectors": Case("catalogs.create_index_job", lambda c: c.call(
        "POST", "/api/v1/catalogs/nowhere/indexes", json={}), 404, "NotFound", "catalog"),
    "upload": Case("uploads.get_upload", lambda c: c.call("GET", "/api/v1/uploads/nope"), 404, "NotFound"),
    "upload-delete": Case("uploads.delete_upload", lambda c: c.call("DELETE", "/api/v1/uploads/nope"), 404,
                          "NotFound"),
    "upload-part": Case("uploads.add_files", lambda c: _part(c, "nope", "admin", {"a.jpg": b"x"}), 404, "NotFound"),
    "score-unknown-upload": Case("jobs.create_score_job", lambda c: c.call(
        "POST", "/api/v1/jobs/score", json={"model": "scorer", "upload": "nope"}), 404, "NotFound", "upload"),
    "embed-unknown-upload": Case("jobs.create_embed_job", lambda c: c.call(
        "POST", "/api/v1/jobs/embed", json={"model": "embedder", "catalog": "shop", "upload": "nope"}), 404,
        "NotFound", "upload"),
    "no-such-route": Case(None, lambda c: c.call("GET", "/api/v1/nothing"), 404, "NotFound"),
    # 400: validation (pydantic)
    "score-body": Case("jobs.create_score_job", lambda c: c.call("POST", "/api/v1/jobs/score", json={}), 400,
                       "InvalidRequest", "model"),
    "embed-body": Case("jobs.create_embed_job", lambda c: c.call(
        "POST", "/api/v1/jobs/embed", json={"model": "embedder", "items": [{"id": "a", "uri": "a"}]}), 400,
        "InvalidRequest", "catalog"),
    "train-body": Case("jobs.create_train_job", lambda c: c.call(
        "POST", "/api/v1/jobs/train", json={**TRAIN, "optimizer": {"name": "lion"}}), 400, "InvalidRequest",
        "optimizer.name"),
    "alias-body": Case("models.set_alias", lambda c: c.call(
        "POST", "/api/v1/models/scorer/aliases/production", json={"version": "one"}), 400, "InvalidRequest",
        "version"),
    "schedule-body": Case("schedules.create_schedule", lambda c: c.call(
        "POST", "/api/v1/schedules", json={"cron": "0 2 * * *"}), 400, "InvalidRequest", "name"),
    "schedule-update": Case("schedules.update_schedule", lambda c: c.call(
        "PATCH", f"/api/v1/schedules/{c.ids['schedule']}", json={"enabled": "maybe"}), 400, "InvalidRequest",
        "enabled"),
    "similar-body": Case("catalogs.similar_one", lambda c: c.call(
        "POST", "/api/v1/similar", json={"catalog": "shop", "item_id": "item-1", "color": "red"}), 400,
        "InvalidRequest", "color"),
    "similar-batch-body": Case("catalogs.similar_batch", lambda c: c.call("POST", "/api/v1/similar/batch", json={}),
                               400, "InvalidRequest", "queries"),
    "jobs-status": Case("jobs.list_jobs", lambda c: c.call("GET", "/api/v1/jobs?status=bogus"), 400,
                        "InvalidRequest", "status"),
    "results-format": Case("jobs.get_results", lambda c: c.call("GET", f"/api/v1/jobs/{JOB}/results?format=xml"),
                           400, "InvalidRequest", "format"),
    "models-limit": Case("models.list_models", lambda c: c.call("GET", "/api/v1/models?limit=1001"), 400,
                         "InvalidRequest", "limit"),
    "sweeps-after": Case("sweeps.list_sweeps", lambda c: c.call("GET", "/api/v1/sweeps?after=nope"), 400,
                         "InvalidRequest", "after"),
    "schedules-unknown-parameter": Case("schedules.list_schedules", lambda c: c.call(
        "GET", "/api/v1/schedules?enabled=true"), 400, "InvalidRequest", "enabled"),
    "workers-seen-within": Case("workers.list_workers", lambda c: c.call("GET", "/api/v1/workers?seen_within=0"),
                                400, "InvalidRequest", "seen_within"),
    "catalogs-limit": Case("catalogs.list_catalogs", lambda c: c.call("GET", "/api/v1/catalogs?limit=0"), 400,
                           "InvalidRequest", "limit"),
    # 400: imgq's own errors naming a field
    "score-upload-without-model": Case("jobs.create_score_job", lambda c: c.call(
        "POST", "/api/v1/jobs/score", **_upload(files=(io.BytesIO(b"x"), "a.jpg"))), 400, "InvalidRequest", "model"),
    "import-without-file": Case("models.import_model", lambda c: c.call(
        "POST", "/api/v1/models", **_upload(name="m", task="regression", input_size="32")), 400, "InvalidRequest",
        "file"),
    "model-name-in-url": Case("models.list_versions", lambda c: c.call("GET", "/api/v1/models/%2E%2E/versions"), 400,
                              "InvalidRequest", "name"),
    "dataset-outside-roots": Case("datasets.check", lambda c: c.call(
        "POST", "/api/v1/datasets/check", json={"path": "../../etc/passwd"}), 400, "InvalidRequest", "path"),
    "sweep-grid": Case("sweeps.create_sweep", lambda c: c.call(
        "POST", "/api/v1/sweeps", json={"base": TRAIN, "grid": {"epochs": []}}), 400, "InvalidRequest", "grid"),
    "thumbnail-size": Case("catalogs.get_thumbnail", lambda c: c.call(
        "GET", "/api/v1/catalogs/shop/items/item-1/thumbnail?size=big"), 400, "InvalidRequest", "size"),
    "job-thumbnail-size": Case("jobs.get_item_thumbnail", lambda c: c.call(
        "GET", f"/api/v1/jobs/{c.ids['alice_job']}/items/a/thumbnail?size=9999"), 400, "InvalidRequest", "size"),
    "job-thumbnail-missing-item": Case("jobs.get_item_thumbnail", lambda c: c.call(
        "GET", f"/api/v1/jobs/{c.ids['alice_job']}/items/nope/thumbnail"), 404, "NotFound"),
    "me-no-token": Case("tokens.get_me", lambda c: c.call("GET", "/api/v1/tokens/me", role=None), 401, "Unauthorized"),
    "deletions-ids": Case("catalogs.delete_items", lambda c: c.call(
        "POST", "/api/v1/catalogs/shop/deletions", json={"ids": "item-1"}), 400, "InvalidRequest", "ids"),
    "score-empty-upload": Case("jobs.create_score_job", lambda c: c.call(
        "POST", "/api/v1/jobs/score", json={"model": "scorer", "upload": _new_upload(c)}), 400, "InvalidRequest",
        "upload"),
    "score-two-sources": Case("jobs.create_score_job", lambda c: c.call(
        "POST", "/api/v1/jobs/score", json={"model": "scorer", "upload": "u", "manifest": "m.csv"}), 400,
        "InvalidRequest", "body"),
    "embed-category-without-upload": Case("jobs.create_embed_job", lambda c: c.call(
        "POST", "/api/v1/jobs/embed", json={"model": "embedder", "catalog": "shop", "category": "coat",
                                            "items": [{"id": "a", "uri": "a"}]}), 400, "InvalidRequest", "body"),
    "part-as-json": Case("uploads.add_files", lambda c: c.call(
        "POST", f"/api/v1/uploads/{_new_upload(c)}/files", json={"files": []}), 400, "InvalidRequest", "files"),
    "part-without-files": Case("uploads.add_files", lambda c: c.call(
        "POST", f"/api/v1/uploads/{_new_upload(c)}/files", **_upload(note="x")), 400, "InvalidRequest", "note"),
    "part-name-too-long": Case("uploads.add_files", lambda c: _part(c, _new_upload(c), "admin", {"a" * 501: b"x"}),
                               400, "InvalidRequest", "files"),
    "create-upload-post-only": Case("uploads.create_upload", lambda c: c.call("PUT", "/api/v1/uploads"), 405,
                                    "MethodNotAllowed"),
    "nul-in-query": Case("jobs.list_jobs", lambda c: c.call("GET", "/api/v1/jobs?model=x%00"), 400,
                         "InvalidRequest", "model"),
    # 405, 409, 413, 414, 422, 429, 500
    **{f"{page}-post": Case(f"dashboard.{page}", lambda c, url=url: c.call("POST", url), 405, "MethodNotAllowed")
       for page, url in {"jobs_page": "/", "login_page": "/login", "job_page": f"/jobs/{JOB}",
                         "models_page": "/models", "schedules_page": "/schedules", "sweep_page": "/sweeps/s",
                         "similar_page": "/similar", "operations_page": "/operations",
                         "static": "/assets/app.js"}.items()},
    "healthz-post": Case("healthz", lambda c: c.call("POST", "/healthz"), 405, "MethodNotAllowed"),
    "readyz-post": Case("readyz", lambda c: c.call("POST", "/readyz"), 405, "MethodNotAllowed"),
    "openapi-post": Case("docs.openapi", lambda c: c.call("POST", "/api/v1/openapi.json"), 405, "MethodNotAllowed"),
    "docs-missing-file": Case("swagger_ui.show", lambda c: c.call("GET", "/api/v1/docs/nope.js"), 404, "NotFound"),
    "delete-a-job": Case("jobs.get_job", lambda c: c.call("DELETE", f"/api/v1/jobs/{JOB}"), 405, "MethodNotAllowed"),
    "rollback-without-history": Case("models.rollback", lambda c: c.call("POST", "/api/v1/models/scorer/rollback"),
                                     409, "Conflict"),
    "part-with-other-bytes": Case("uploads.add_files", lambda c: _part(
        c, _new_upload(c, "admin", "a.jpg"), "admin", {"a.jpg": b"other", "b.jpg": b"y"}), 409, "Conflict", "files"),
    "part-to-a-taken-upload": Case("uploads.add_files", lambda c: _part(c, _taken_upload(c), "admin", {"b.jpg": b"y"}),
                                   409, "Conflict"),
    "score-a-taken-upload": Case("jobs.create_score_job", lambda c: c.call(
        "POST", "/api/v1/jobs/score", json={"model": "scorer", "upload": _taken_upload(c)}), 409, "Conflict",
        "upload"),
    "delete-a-taken-upload": Case("uploads.delete_upload", lambda c: c.call(
        "DELETE", f"/api/v1/uploads/{_taken_upload(c)}"), 409, "Conflict"),
    "delta-without-index": Case("catalogs.create_index_job", lambda c: c.call(
        "POST", "/api/v1/catalogs/shop/indexes", json={"mode": "delta"}), 409, "Conflict", "mode"),
    "json-over-the-limit": Case("jobs.create_score_job", lambda c: c.call(
        "POST", "/api/v1/jobs/score", json={"model": "scorer", "manifest": "x" * 5000}), 413,
        "RequestEntityTooLarge"),
    "upload-over-the-limit": Case("jobs.create_score_job", lambda c: c.call(
        "POST", "/api/v1/jobs/score", **_upload(model="scorer", files=(io.BytesIO(b"x" * 100_000), "a.jpg"))), 413,
        "RequestEntityTooLarge"),
    "url-over-the-limit": Case("jobs.get_job", lambda c: c.call("GET", "/api/v1/jobs/" + "j" * 5000), 414,
                               "RequestURITooLarge"),
    "key-reused": Case("jobs.create_train_job", _key_reused, 422, "Unprocessable", "Idempotency-Key"),
    "embedding-model-scores": Case("jobs.create_score_job", lambda c: c.call(
        "POST", "/api/v1/jobs/score", json={"model": "embedder", "items": [{"id": "a", "uri": "a"}]}), 422,
        "Unprocessable", "model"),
    "active-job-cap": Case("jobs.create_score_job", lambda c: c.call(
        "POST", "/api/v1/jobs/score", role="alice", json={"model": "scorer", "items": [{"id": "a", "uri": "a"}]}),
        429, "TooManyRequests"),
    "request-rate": Case("jobs.list_jobs", _rate_limited, 429, "TooManyRequests"),
    "unexpected": Case("jobs.get_job", _unexpected, 500, "InternalError"),
}


@pytest.mark.parametrize("name", CASES)
def test_every_error_of_every_endpoint_has_the_one_shape(ctx, name):
    case = CASES[name]
    resp = case.send(ctx)
    error = assert_error(resp, case.status, case.kind, case.field)
    if case.field is None and case.status not in (400, 422):
        assert error["problems"] == []
    if case.status == 429:
        assert int(resp.headers["Retry-After"]) > 0
    if case.status == 405:
        assert resp.headers["Allow"]
    if name == "active-job-cap":
        assert (error["limit"], error["active"]) == (1, 1)
    if name.endswith("-scope"):
        assert error["scope"] in ("admin", "read", "score", "train")


def test_the_cases_above_cover_every_endpoint(app):
    covered = {case.endpoint for case in CASES.values()}
    assert {rule.endpoint for rule in app.url_map.iter_rules() if rule.endpoint != "static"} <= covered
