"""Bad input gets a 4xx with a JSON body naming the problem, and loses nothing already stored.

Runs against the web front as a real process on the embedded default (SQLite, filesystem broker)."""
import json
import uuid

import pytest

from tests.helpers import import_model_http, write_jpeg

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(embedded_stack, model_files):
    embedded_stack.model = f"m-{uuid.uuid4().hex[:6]}"
    import_model_http(embedded_stack, model_files["regression"], embedded_stack.model)
    write_jpeg(embedded_stack.data / "ok.jpg")
    (embedded_stack.data / "bad.csv").write_text("sku,photo\nA,ok.jpg\n")
    return embedded_stack


def job_count(stack):
    return len(stack.http.get(stack.url("/api/v1/jobs"), params={"limit": 500}, timeout=10).json()["jobs"])


def post(stack, path, **kw):
    return stack.http.post(stack.url(path), timeout=60, **kw)


@pytest.mark.parametrize("body, status, field_or_text", [
    ({}, 400, "model"),
    ({"model": "x"}, 400, "either 'items' or 'manifest'"),
    ({"model": "M", "items": []}, 400, "'items' is empty"),
    ({"model": "M", "items": [{"id": "a"}]}, 400, "items.0.uri"),
    ({"model": "M", "items": [{"id": "a", "uri": "ok.jpg"}], "colour": 1}, 400, "colour"),
    ({"model": "M", "items": [{"id": "a", "uri": "ok.jpg"}], "manifest": "x.csv"}, 400, "not both"),
    ({"model": "nope", "items": [{"id": "a", "uri": "ok.jpg"}]}, 404, "no model named 'nope'"),
    ({"model": "M@9", "items": [{"id": "a", "uri": "ok.jpg"}]}, 404, "has no version 9"),
    ({"model": "M", "items": [{"id": "a", "uri": "ok.jpg"}, {"id": "a", "uri": "ok.jpg"}]}, 400, "unique"),
    ({"model": "M", "manifest": "../../etc/passwd"}, 400, "outside the data roots"),
    ({"model": "M", "manifest": "missing.csv"}, 400, "manifest not found"),
    ({"model": "M", "manifest": "bad.csv"}, 400, "no column 'id'"),
    ({"model": "M", "manifest": "bad.csv", "id_column": "sku"}, 400, "no column 'image'"),
])
def test_bad_score_requests(stack, body, status, field_or_text):
    body = json.loads(json.dumps(body).replace('"M', f'"{stack.model}'))
    before = job_count(stack)
    resp = post(stack, "/api/v1/jobs/score", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert field_or_text in json.dumps(error)
    assert error["message"]
    assert job_count(stack) == before  # nothing half-created


def test_non_json_bodies(stack):
    resp = post(stack, "/api/v1/jobs/score", data="model=x", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 400 and "application/json or multipart" in resp.json()["error"]["message"]
    resp = post(stack, "/api/v1/jobs/score", data="{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "JSON object" in resp.json()["error"]["message"]


def test_multipart_without_files_or_model(stack):
    resp = post(stack, "/api/v1/jobs/score", data={"model": stack.model}, files={"x": ("", b"")})
    assert resp.status_code == 400
    resp = post(stack, "/api/v1/jobs/score", files={"files": ("a.jpg", b"123")})
    assert resp.status_code == 400 and resp.json()["error"]["problems"][0]["field"] == "model"
    resp = post(stack, "/api/v1/jobs/score", data={"model": stack.model},
                files=[("files", ("a.jpg", b"1")), ("files", ("a.jpg", b"2"))])
    assert resp.status_code == 400 and "unique" in resp.json()["error"]["message"]


def test_unknown_things_are_404_json(stack):
    for path in ("/api/v1/jobs/00000000-0000-0000-0000-000000000000",
                 "/api/v1/jobs/00000000-0000-0000-0000-000000000000/results",
                 "/api/v1/models/nope/versions", "/api/v1/nothing"):
        resp = stack.http.get(stack.url(path), timeout=10)
        assert resp.status_code == 404 and resp.json()["error"]["message"], path


def test_bad_query_parameters(stack):
    assert stack.http.get(stack.url("/api/v1/jobs"), params={"limit": "lots"}, timeout=10).status_code == 400
    resp = stack.http.get(stack.url("/api/v1/jobs"), params={"limit": 100000}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["problems"][0]["field"] == "limit"
    resp = stack.http.get(stack.url("/api/v1/jobs"), params={"status": "exploded"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["problems"][0]["field"] == "status"
    assert "'succeeded'" in resp.json()["error"]["message"]


def test_model_import_errors(stack, model_files):
    with open(model_files["unsafe"], "rb") as fh:
        resp = post(stack, "/api/v1/models", data={"name": "evil", "task": "regression", "input_size": "32"},
                    files={"file": ("unsafe.keras", fh)})
    assert resp.status_code == 202 and resp.json()["kind"] == "import", resp.text
    job = stack.wait_job(resp.json()["id"])  # the maintenance worker inspects the file and refuses it
    assert job["status"] == "failed" and job["model"]["result"] is None, job
    assert "arbitrary Python code" in job["error"] and job["error"].startswith("unsafe.keras"), job["error"]
    assert str(stack.data.parent) not in json.dumps(job) and ".staging" not in json.dumps(job)  # no server path
    with open(model_files["regression"], "rb") as fh:
        resp = post(stack, "/api/v1/models", data={"name": "m2", "task": "regression"},
                    files={"file": ("r.keras", fh)})
    assert resp.status_code == 400 and "input_size" in resp.json()["error"]["message"]
    resp = post(stack, "/api/v1/models", data={"name": "m2", "task": "regression", "input_size": "32"})
    assert resp.status_code == 400 and resp.json()["error"]["problems"][0]["field"] == "file"
    assert stack.http.get(stack.url("/api/v1/models/evil/versions"), timeout=10).status_code == 404


def test_alias_errors(stack):
    resp = post(stack, f"/api/v1/models/{stack.model}/aliases/production", json={"version": 5})
    assert resp.status_code == 404 and "has no version 5" in resp.json()["error"]["message"]
    resp = post(stack, f"/api/v1/models/{stack.model}/aliases/production", json={"version": "one"})
    assert resp.status_code == 400 and resp.json()["error"]["problems"][0]["field"] == "version"


def test_over_long_urls_get_a_json_414_up_to_gunicorns_own_limit(stack):
    resp = stack.http.get(stack.url("/api/v1/jobs/" + "j" * 6000), timeout=10)
    assert resp.status_code == 414 and resp.json()["error"]["type"] == "RequestURITooLarge"
    # beyond gunicorn's largest request line (8190 bytes) gunicorn answers itself, in HTML: the documented gap
    assert stack.http.get(stack.url("/api/v1/jobs/" + "j" * 9000), timeout=10).status_code == 414


def test_nul_bytes_and_huge_numbers_through_gunicorn_are_400s(stack):
    for path, params in ((f"/api/v1/models/{stack.model}/versions/99999999999999999999", None),
                         ("/api/v1/jobs", {"model": "x\x00"}), ("/api/v1/jobs/%00", None)):
        resp = stack.http.get(stack.url(path), params=params, timeout=10)
        assert resp.status_code == 400 and resp.json()["error"]["problems"][0]["field"], (path, resp.text)
