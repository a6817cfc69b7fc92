"""Access control through the app factory: every endpoint without a token, with a token lacking its scope
and with the right one; tokens revoked; per-token rates and caps on concurrent jobs (429 + Retry-After)."""
from dataclasses import replace

import pytest
from sqlalchemy import select

from shared.core.db import session_scope
from shared.core.tables import Job, ModelVersion
from shared.services import tokens
from web.app import create_app
from web.auth import OPEN, SCOPE_OF

PARAMS = {"job_id": "00000000-0000-0000-0000-000000000000", "name": "m", "alias": "staging", "version": 1,
          "schedule_id": 1, "sweep_id": "nope", "catalog": "shop", "item_id": "item-1",
          "upload_id": "nope"}


def make_token(scopes: str) -> str:
    with session_scope() as s:
        return tokens.create_token(s, f"t-{scopes}", scopes)[1]


def endpoints(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint in OPEN or rule.endpoint == "prometheus_metrics":
            continue
        url = rule.rule
        for arg in rule.arguments:
            for converter in ("", "int:", "path:"):
                url = url.replace(f"<{converter}{arg}>", str(PARAMS[arg]))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, url


@pytest.fixture
def app(configured):
    return create_app(replace(configured, auth_enabled=True, metrics_public=False))


def call(client, method, url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.open(url, method=method, headers=headers, json={} if method != "GET" else None)


def test_every_endpoint_has_a_declared_scope(app):
    undeclared = {endpoint for endpoint, _, _ in endpoints(app)} - set(SCOPE_OF)
    assert not undeclared, f"endpoints without a scope (they would need admin): {undeclared}"


def test_every_endpoint_refuses_a_missing_or_unknown_token_with_401(app):
    client = app.test_client()
    for endpoint, method, url in endpoints(app):
        for token in (None, "imgq_not-a-token", "Basic abc"):
            resp = call(client, method, url, token)
            assert resp.status_code == 401, (endpoint, method, token, resp.status_code)
            assert resp.json["error"]["type"] == "Unauthorized"


def test_every_endpoint_refuses_a_token_without_its_scope_with_403_and_serves_one_with_it(app):
    client = app.test_client()
    by_scope = {scope: make_token(scope) for scope in tokens.SCOPES}
    for endpoint, method, url in endpoints(app):
        needed = SCOPE_OF[endpoint]
        for scope, token in by_scope.items():
            resp = call(client, method, url, token)
            if scope in (needed, "admin"):
                assert resp.status_code not in (401, 403), (endpoint, method, scope, resp.json)
            else:
                assert resp.status_code == 403, (endpoint, method, scope, resp.status_code)
                assert resp.json["error"]["scope"] == needed


def test_open_endpoints_need_no_token_and_metrics_follow_their_setting(app, configured):
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)  # answered, whatever the sweeper says
    assert client.get("/metrics").status_code == 401
    public = create_app(replace(configured, auth_enabled=True, metrics_public=True)).test_client()
    assert public.get("/metrics").status_code == 200


def test_a_revoked_token_is_refused(app):
    client = app.test_client()
    token = make_token("read")
    assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with session_scope() as s:
        tokens.revoke_token(s, max(t["id"] for t in tokens.list_tokens(s)))
    resp = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401 and "revoked" in resp.json["error"]["message"]


def test_only_hashes_are_stored(app):
    token = make_token("read")
    with session_scope() as s:
        stored = [row.token_hash for row in s.scalars(select(tokens.ApiToken))]
    assert token not in stored and all(len(h) == 64 for h in stored)


def test_a_token_over_its_rate_gets_429_with_retry_after(configured):
    app = create_app(replace(configured, auth_enabled=True, rate_limit="3 per minute"))
    client, token = app.test_client(), make_token("read")
    codes = [client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code
             for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    resp = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0
    assert resp.json["error"]["type"] == "TooManyRequests"
    other = make_token("read")  # limits are per token
    assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {other}"}).status_code == 200


@pytest.fixture
def model_m(configured):
    from shared.services.model_registry import set_alias

    with session_scope() as s:
        s.add(ModelVersion(name="m", version=1, task="regression", input_height=32, input_width=32,
                           resize_mode="stretch", pixel_scale="unit", output_names=["v"],
                           target_transform={"kind": "none"}, path="/nowhere", sha256="0" * 64, size_bytes=1))
        s.flush()
        set_alias(s, "m", "production", 1)


def test_jobs_record_their_token_which_alone_may_cancel_them_and_caps_concurrent_jobs(configured, model_m):
    app = create_app(replace(configured, auth_enabled=True, max_active_jobs=1))
    client = app.test_client()
    alice, bob, admin = make_token("score,read"), make_token("score,read"), make_token("admin")
    body = {"model": "m", "items": [{"id": "a", "uri": "a.jpg"}]}
    first = client.post("/api/v1/jobs/score", json=body, headers={"Authorization": f"Bearer {alice}"})
    assert first.status_code == 202, first.json
    second = client.post("/api/v1/jobs/score", json=body, headers={"Authorization": f"Bearer {alice}"})
    assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0
    assert "limit is 1" in second.json["error"]["message"]
    assert client.post("/api/v1/jobs/score", json=body, headers={"Authorization": f"Bearer {bob}"}).status_code == 202
    job_id = first.json["id"]
    with session_scope() as s:
        owner = s.scalar(select(Job.token_id).where(Job.id == job_id))
        assert owner == tokens.authenticate(s, alice).token_id
    url = f"/api/v1/jobs/{job_id}/cancel"
    assert client.post(url, headers={"Authorization": f"Bearer {bob}"}).status_code == 403
    assert client.post(url, headers={"Authorization": f"Bearer {alice}"}).json["status"] == "canceled"
    assert client.post(f"/api/v1/jobs/{second.json.get('id', job_id)}/cancel",
                       headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    again = client.post("/api/v1/jobs/score", json=body, headers={"Authorization": f"Bearer {alice}"})
    assert again.status_code == 202  # the canceled job no longer counts


def test_the_tokens_cli_creates_lists_and_revokes(configured, capsys):
    import json

    from shared.tools.cli import main

    assert main(["tokens", "create", "--name", "ci-bot", "--scopes", "read,score"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["token"].startswith("imgq_") and created["scopes"] == ["read", "score"]
    assert main(["tokens", "list"]) == 0
    listed = capsys.readouterr().out
    assert "ci-bot" in listed and created["token"] not in listed
    assert main(["tokens", "revoke", str(created["id"])]) == 0
    with session_scope() as s:
        assert tokens.authenticate(s, created["token"]) is None
    assert main(["tokens", "create", "--name", "x", "--scopes", "root"]) == 2
