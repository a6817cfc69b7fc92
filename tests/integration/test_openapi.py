"""The API document (/api/v1/openapi.json) and its page (/api/v1/docs), through the app factory: the document is
valid OpenAPI 3.1 and covers every route, scope, submission and list; each job kind answers as documented; and
schemathesis, run against the WSGI app with an admin token on SQLite and PostgreSQL, finds no 5xx and no answer that
departs from the document, operation by operation (boundary cases, the document's examples, then generated valid and
invalid requests) and along the document's links. About a minute per database on 2 cores: marked slow."""
from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from shared.core import liveness
from shared.core.db import session_scope
from shared.core.states import JobKind, JobStatus, RunState
from shared.core.tables import Job, ModelVersion, TrainRun, utcnow
from shared.services import tokens
from tests.helpers import authorized_client, migrated_database, seed_embeddings, seed_version
from web import auth
from web.openapi import HTML_BLUEPRINTS, UNDOCUMENTED, Undocumented, build_document
from worker.index_builder import run_index_job

SUBMISSIONS = {"jobs.create_score_job", "jobs.create_embed_job", "jobs.create_train_job", "sweeps.create_sweep",
               "models.import_model", "catalogs.create_index_job"}  # the README's list of job-creating endpoints
LISTS = {"jobs.list_jobs", "jobs.get_results", "models.list_models", "models.list_versions",
         "schedules.list_schedules", "sweeps.list_sweeps", "catalogs.list_catalogs", "tokens.list_tokens"}


@pytest.fixture
def db_url(request, tmp_path):
    """The embedded default (SQLite) unless a test asks for PostgreSQL too (`indirect` parametrization): the
    document does not depend on the database; schemathesis runs on both."""
    with migrated_database(getattr(request, "param", "sqlite"), tmp_path) as url:
        yield url


BOTH_DATABASES = pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(autouse=True)
def room_to_fuzz(monkeypatch):
    """Rates and caps high enough that schemathesis' requests are not refused by them (their 429s are documented
    and tested elsewhere), and a short wait for a worker that is not there (a query by image is a 503)."""
    monkeypatch.setenv("IMGQ_RATE_LIMIT", "1000000 per minute")
    monkeypatch.setenv("IMGQ_MAX_ACTIVE_JOBS", "100000")
    monkeypatch.setenv("IMGQ_QUERY_TIMEOUT", "0.2")


@pytest.fixture
def document(app) -> dict:
    resp = app.test_client().get("/api/v1/openapi.json")
    assert resp.status_code == 200 and resp.is_json
    return resp.json


def operations(document: dict):
    """(path, method, operation) for every operation of the document."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


# ------------------------------------------------------------------------------------------- the document


def test_the_document_is_valid_openapi_3_1_and_open(document):
    validate(document)
    assert document["openapi"].startswith("3.1")


def test_every_route_of_the_app_is_documented_with_each_of_its_methods(app, document):
    documented = {(op["operationId"], method.upper()) for _, method, op in operations(document)}
    routes = {(rule.endpoint, method) for rule in app.url_map.iter_rules()
              if rule.endpoint not in UNDOCUMENTED and not rule.endpoint.startswith(HTML_BLUEPRINTS)
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routes
    assert {rule.endpoint for rule in app.url_map.iter_rules()} & UNDOCUMENTED == {"static", "swagger_ui.show"}


def test_a_route_without_a_declaration_stops_the_document(app):
    app.add_url_rule("/api/v1/undeclared", "undeclared", lambda: "")
    with pytest.raises(Undocumented, match="/api/v1/undeclared"):
        build_document(app)


def test_every_operation_asks_for_the_scope_the_auth_table_gives_it(document, configured):
    assert document["components"]["securitySchemes"]["bearer"] == {
        **document["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    open_ = auth.OPEN | ({"prometheus_metrics"} if configured.metrics_public else set())
    for _, _, op in operations(document):
        endpoint = op["operationId"]
        if endpoint in open_:
            assert op["security"] == [] and "401" not in op["responses"], endpoint
        else:
            assert op["security"] == [{"bearer": [auth.SCOPE_OF.get(endpoint, "admin")]}], endpoint
            assert {"401", "403"} <= set(op["responses"]), endpoint


def test_submissions_take_an_idempotency_key_and_answer_202_with_location(document):
    submitting = set()
    for _, _, op in operations(document):
        keys = [p for p in op.get("parameters", []) if p["name"] == "Idempotency-Key"]
        if keys:
            submitting.add(op["operationId"])
            assert keys[0]["in"] == "header" and keys[0]["schema"]["maxLength"] == 200
            accepted = op["responses"]["202"]
            assert {"Location", "Idempotent-Replayed"} <= set(accepted["headers"])
            assert {"422", "429"} <= set(op["responses"])
    assert submitting == SUBMISSIONS


def test_lists_page_with_limit_and_an_opaque_cursor(document):
    for _, _, op in operations(document):
        if op["operationId"] in LISTS:
            params = {p["name"]: p for p in op["parameters"] if p["in"] == "query"}
            assert params["limit"]["schema"]["maximum"] == 1000 and params["limit"]["schema"]["minimum"] == 1
            assert params["after"]["required"] is False
            answer = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            page = document["components"]["schemas"][answer.rsplit("/", 1)[1]]
            assert "next" in page["required"]


def test_every_error_answer_has_the_one_error_shape_and_a_429_its_retry_after(document):
    responses = document["components"]["responses"]
    for name, response in responses.items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, name
    assert responses["TooManyRequests"]["headers"]["Retry-After"]["required"] is True
    for _, _, op in operations(document):
        for status in ("400", "414"):
            assert status in op["responses"], (op["operationId"], status)


def test_uploads_are_documented_as_multipart_with_their_file_parts(document):
    forms = {op["operationId"]: op["requestBody"]["content"]["multipart/form-data"]["schema"]
             for _, _, op in operations(document)
             if "multipart/form-data" in op.get("requestBody", {}).get("content", {})}
    assert set(forms) == {"jobs.create_score_job", "jobs.create_embed_job", "models.import_model",
                          "catalogs.similar_one", "uploads.add_files"}
    assert forms["uploads.add_files"]["properties"]["files"]["items"]["format"] == "binary"
    assert forms["jobs.create_score_job"]["properties"]["files"]["items"]["format"] == "binary"
    assert forms["models.import_model"]["properties"]["file"]["format"] == "binary"
    assert forms["catalogs.similar_one"]["properties"]["image"]["format"] == "binary"
    assert "image_base64" not in forms["catalogs.similar_one"]["properties"]


def test_operations_that_need_a_worker_document_503(document):
    for _, _, op in operations(document):
        if op["operationId"] in ("catalogs.similar_one", "catalogs.similar_batch"):
            assert "503" in op["responses"]


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_the_docs_page_is_open_and_loads_only_files_served_here(app):
    client = app.test_client()  # no token
    page = client.get("/api/v1/docs/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    parser = _Assets()
    parser.feed(html)
    assert parser.urls and all(url.startswith("/api/v1/docs/") for url in parser.urls), parser.urls
    assert not re.search(r"https?://", html), "the page names another host"
    for url in parser.urls:
        assert client.get(url).status_code == 200, url
    assert '"url": "/api/v1/openapi.json"' in html and '"validatorUrl": null' in html
    assert client.get("/api/v1/docs").status_code in (301, 308)


# ------------------------------------------------------------------------------------------- answers


def _validator(document: dict, name: str) -> Draft202012Validator:
    registry = Registry().with_resource("urn:imgq", Resource.from_contents(
        {**document, "$schema": "https://json-schema.org/draft/2020-12/schema"}))
    return Draft202012Validator({"$ref": f"urn:imgq#/components/schemas/{name}"}, registry=registry)


def _seed_jobs_of_every_kind(client, settings) -> dict[str, str]:
    """A score job (submitted), a train job with its run finished, an import job that made a version, an index job
    built in-process, and an embed job: their ids by kind."""
    parent = seed_version("pageviews")
    seed_embeddings("shop", seed_version("embedder", task="embedding"), "embedder@1", 5)
    ids = {"embed": None}
    score = client.post("/api/v1/jobs/score", json={"model": "pageviews", "items": [{"id": "a", "uri": "a.jpg"}]})
    ids["score"] = score.json["id"]
    index = client.post("/api/v1/catalogs/shop/indexes", json={"params": {"kind": "exact"}})
    ids["index"] = index.json["id"]
    run_index_job(ids["index"], settings)
    with session_scope() as session:
        ids["embed"] = session.scalar(select(Job.id).where(Job.kind == JobKind.EMBED))
        result = session.get(ModelVersion, parent)
        train_id, import_id = str(uuid.uuid4()), str(uuid.uuid4())
        session.add(Job(id=train_id, kind=JobKind.TRAIN, status=JobStatus.SUCCEEDED, model_version_id=parent,
                        model_ref="pageviews", source={"type": "train", "dataset": "crawl/items.csv"}))
        session.add(Job(id=import_id, kind=JobKind.IMPORT, status=JobStatus.SUCCEEDED, model_version_id=parent,
                        model_ref="pageviews", total_items=1, done_items=1,
                        source={"type": "import", "name": "pageviews", "file": "pv.keras", "description": None,
                                "signature": {"task": "regression"}, "promote": None}))
        session.flush()
        session.add(TrainRun(job_id=train_id, model_name="pageviews", spec={"task": "regression", "epochs": 2},
                             state=RunState.DONE, attempts=1, epoch=2, epochs_total=2, step=10, steps_per_epoch=10,
                             checkpoint_epoch=2, phase="done", result_version_id=result.id,
                             data_stats={"train": 80, "validation": 10, "holdout": 10},
                             holdout_metrics={"mae": 1.5, "r2": None},
                             comparison={"gate": {"decision": "promoted", "reason": "better"}}))
        ids.update(train=train_id, import_=import_id)
    return ids


def test_a_job_of_every_kind_answers_as_the_document_says(app, client, configured, document):
    ids = _seed_jobs_of_every_kind(client, configured)
    validator = _validator(document, "Job")
    kinds = set()
    for job_id in ids.values():
        resp = client.get(f"/api/v1/jobs/{job_id}")
        assert resp.status_code == 200, resp.json
        assert not list(validator.iter_errors(resp.json)), (resp.json, list(validator.iter_errors(resp.json)))
        kinds.add(resp.json["kind"])
    assert kinds == {kind.value for kind in JobKind}
    page = client.get("/api/v1/jobs?limit=1000")
    assert len(page.json["jobs"]) == len(ids) and not list(_validator(document, "JobsPage").iter_errors(page.json))


def test_an_answer_the_model_does_not_describe_is_a_server_fault_not_a_client_error(client, monkeypatch):
    from shared.services import jobs

    seed_version("pageviews")
    job = client.post("/api/v1/jobs/score", json={"model": "pageviews", "items": [{"id": "a", "uri": "a.jpg"}]})
    real = jobs.job_json
    monkeypatch.setattr(jobs, "job_json", lambda session, row: {**real(session, row), "surprise": 1})
    resp = client.get(f"/api/v1/jobs/{job.json['id']}")
    assert resp.status_code == 500 and resp.json["error"]["type"] == "InternalError"
    assert "surprise" not in resp.get_data(as_text=True)


# ------------------------------------------------------------------------------------------- schemathesis

NEEDS_A_WORKER = {"catalogs.similar_one", "catalogs.similar_batch"}  # no worker here: a query by image is a 503


def not_a_server_error_but_a_missing_worker(ctx, response, case):
    """No 5xx, except the documented 503 of an operation that needs a worker this test does not start."""
    if response.status_code == 503 and case.operation.definition.raw.get("operationId") in NEEDS_A_WORKER:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [not_a_server_error_but_a_missing_worker, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
EXAMPLES = 15  # generated per operation and mode (valid data, data the document forbids), after the fixed cases


@pytest.fixture
def admin_headers(app) -> dict:
    with session_scope() as session:
        _, secret = tokens.create_token(session, "schemathesis", ["admin"])
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def api_schema(app, configured):
    """The document as schemathesis reads it from the app, over rows that let answers other than 404 happen: a
    model with a production version, a catalog with an index, jobs of every kind; and a sweep just done, so that
    /readyz is ready."""
    _seed_jobs_of_every_kind(authorized_client(app), configured)
    with session_scope() as session:
        liveness.record_beat(session, liveness.SWEEPER, utcnow())
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


def _boundaries(schema, operation, headers: dict) -> None:
    """schemathesis' coverage cases: each parameter and field at and beyond its documented bounds (longest
    strings, extreme numbers, missing required parts, wrong types), valid and invalid."""
    generation = schema.config.generation_for(operation=operation, phase="coverage")
    for case in schema.iter_coverage_cases(operation, generation_modes=list(GenerationMode),
                                           generation_config=generation):
        case.call_and_validate(headers=headers, checks=CHECKS)


def _generated(operation, headers: dict) -> None:
    """Hypothesis: the document's examples, then generated valid requests and requests the document forbids."""
    strategy = st.one_of([*operation.get_strategies_from_examples(),
                          *(operation.as_strategy(generation_mode=mode) for mode in GenerationMode)])

    @settings(max_examples=EXAMPLES * 2, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


@pytest.mark.slow
@BOTH_DATABASES
def test_no_operation_answers_5xx_or_departs_from_the_document(api_schema, admin_headers):
    failures = {}
    for result in api_schema.get_all_operations():  # every operation but the document's own
        operation = result.ok()
        try:
            _boundaries(api_schema, operation, admin_headers)
            _generated(operation, admin_headers)
        except (Exception, FailureGroup) as exc:  # every operation is run; the failures are reported together
            failures[operation.label] = exc
    assert not failures, "\n\n".join(f"{label}: {exc}" for label, exc in failures.items())


class DatabaseSnapshot:
    """Every row of every table as it is now, put back by `restore` (the tables are small: the seeded rows)."""

    def __init__(self, url: str):
        from shared.core.db import engine_for
        from shared.core.tables import Base

        self.engine = engine_for(url)
        self.tables = list(Base.metadata.sorted_tables)  # parents before children
        with self.engine.connect() as conn:
            self.rows = {t.name: [dict(r._mapping) for r in conn.execute(t.select())] for t in self.tables}

    def restore(self) -> None:
        with self.engine.begin() as conn:
            for table in reversed(self.tables):
                conn.execute(table.delete())
            for table in self.tables:
                if self.rows[table.name]:
                    conn.execute(table.insert(), self.rows[table.name])


@pytest.mark.slow
@BOTH_DATABASES
def test_following_the_documents_links_meets_no_5xx_nor_an_undocumented_answer(api_schema, admin_headers, db_url):
    seeded = DatabaseSnapshot(db_url)

    class Workflow(api_schema.as_state_machine()):
        def teardown(self):
            """Every example starts from the seeded rows: hypothesis replays a failing example to report it, and
            rows an earlier example left (jobs, uploads, aliases) would make the replay draw other links, so
            hypothesis would report only that the replay differed (FlakyStrategyDefinition), hiding the failure."""
            seeded.restore()
            super().teardown()

        def get_call_kwargs(self, case):
            return {"headers": admin_headers}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=CHECKS, headers=admin_headers)

    Workflow.run(settings=settings(max_examples=40, stateful_step_count=8, deadline=None, derandomize=True,
                                   database=None, suppress_health_check=list(HealthCheck)))
