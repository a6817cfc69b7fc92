"""Every endpoint that creates a job, through the app factory on SQLite and PostgreSQL: score and embed (JSON and
multipart), train, sweep, model import and index build honour Idempotency-Key the same way (a replay is a 202 with
the same job or sweep and Idempotent-Replayed: true, one row; the key under another request is a 422), count against
IMGQ_MAX_ACTIVE_JOBS (429 with Retry-After, nothing stored, staged files removed), and record the calling token on
every job they make, a sweep's included."""
from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import Job, Sweep
from shared.services import jobs, model_imports, tokens
from tests.helpers import assert_error, seed_embeddings, seed_version
from web.app import create_app

TRAIN = {"model": "cats", "task": "classification", "input_size": 32, "epochs": 1,
         "dataset": {"path": "cats/items.csv", "label_column": "label"}, "base": {"architecture": "vgg"}}


def _multipart(fields: dict, name: str, data: bytes, filename: str) -> dict:
    return {"data": {**fields, name: (io.BytesIO(data), filename)}, "content_type": "multipart/form-data"}


@dataclass(frozen=True)
class Submission:
    """One way to create jobs: where to POST, the request (`other`: a different one), and how many jobs it makes."""
    url: str
    request: object  # (other: bool) -> keyword arguments of client.post
    jobs: int = 1

    def send(self, client, key: str | None = None, other: bool = False):
        headers = {"Idempotency-Key": key} if key else {}
        return client.post(self.url, headers=headers, **self.request(other))


SUBMISSIONS = {
    "score-json": Submission("/api/v1/jobs/score", lambda other: {"json": {
        "model": "scorer", "items": [{"id": "b" if other else "a", "uri": "a.jpg"}]}}),
    "score-multipart": Submission("/api/v1/jobs/score", lambda other: _multipart(
        {"model": "scorer"}, "files", b"other" if other else b"photo", "a.jpg")),
    "embed-json": Submission("/api/v1/jobs/embed", lambda other: {"json": {
        "model": "embedder", "catalog": "d" if other else "c", "items": [{"id": "a", "uri": "a.jpg"}]}}),
    "embed-multipart": Submission("/api/v1/jobs/embed", lambda other: _multipart(
        {"model": "embedder", "catalog": "d" if other else "c"}, "files", b"photo", "a.jpg")),
    "train": Submission("/api/v1/jobs/train", lambda other: {"json": {**TRAIN, "epochs": 2 if other else 1}}),
    "sweep": Submission("/api/v1/sweeps", lambda other: {"json": {
        "base": TRAIN, "grid": {"optimizer.learning_rate": [0.1, 0.03] if other else [0.1, 0.01]}}}, jobs=2),
    "import": Submission("/api/v1/models", lambda other: _multipart(
        {"name": "imported", "task": "regression", "input_size": "32"}, "file", b"other" if other else b"keras",
        "m.keras")),
    "index": Submission("/api/v1/catalogs/shop/indexes", lambda other: {
        "json": {"params": {"kind": "exact"}} if other else {}}),
}


@pytest.fixture
def models(configured):
    seed_version("scorer")
    seed_embeddings("shop", seed_version("embedder", task="embedding"), "embedder@1", 5)


def token_client(app, scopes: str = "admin"):
    """A client sending a fresh token's secret, and the token's id."""
    with session_scope() as session:
        row, secret = tokens.create_token(session, "submitter", scopes)
        token_id = row.id
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client, token_id


def counts() -> tuple[int, int]:
    with session_scope() as session:
        return (session.scalar(select(func.count()).select_from(Job)),
                session.scalar(select(func.count()).select_from(Sweep)))


def made_jobs(resp) -> list[str]:
    body = resp.json
    return [run["job_id"] for run in body["runs"]] if "runs" in body else [body["id"]]


def files_under(*folders: Path) -> set[Path]:
    return {p for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_every_job_creating_endpoint_replays_a_repeated_idempotency_key(configured, models, name):
    submission = SUBMISSIONS[name]
    client, token_id = token_client(create_app(configured))
    jobs_before, sweeps_before = counts()
    first = submission.send(client, "key-1")
    again = submission.send(client, "key-1")
    assert (first.status_code, again.status_code) == (202, 202), (first.json, again.json)
    assert first.json["id"] == again.json["id"] and first.headers["Location"] == again.headers["Location"]
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    assert counts() == (jobs_before + submission.jobs, sweeps_before + (name == "sweep"))
    with session_scope() as session:
        owners = session.scalars(select(Job.token_id).where(Job.id.in_(made_jobs(first)))).all()
    assert owners == [token_id] * submission.jobs  # every job records the token that made it
    assert_error(submission.send(client, "key-1", other=True), 422, "Unprocessable", "Idempotency-Key")
    assert counts() == (jobs_before + submission.jobs, sweeps_before + (name == "sweep"))
    third = submission.send(client, "key-2")  # another key: another job
    assert third.status_code == 202 and third.json["id"] != first.json["id"]


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_every_job_creating_endpoint_counts_against_the_active_job_cap(configured, models, name):
    submission = SUBMISSIONS[name]
    client, _ = token_client(create_app(replace(configured, max_active_jobs=submission.jobs)))
    first = submission.send(client, "fills-the-cap")
    assert first.status_code == 202, first.json
    assert submission.send(client, "fills-the-cap").status_code == 202  # a replay makes nothing: not refused
    stored = counts(), files_under(configured.upload_dir, model_imports.staging_dir(configured.model_store))
    over = submission.send(client, other=True)
    error = assert_error(over, 429, "TooManyRequests")
    assert int(over.headers["Retry-After"]) > 0 and error["limit"] == submission.jobs
    assert (counts(), files_under(configured.upload_dir, model_imports.staging_dir(configured.model_store))) == stored


def test_a_sweep_counts_all_its_jobs_and_its_token_may_cancel_them(configured, models):
    app = create_app(replace(configured, max_active_jobs=1))
    client, token_id = token_client(app, "train,read")
    before = counts()
    too_big = SUBMISSIONS["sweep"].send(client)  # two jobs over a cap of one, with none running
    assert_error(too_big, 429, "TooManyRequests")
    assert counts() == before
    client, token_id = token_client(create_app(replace(configured, max_active_jobs=2)), "train,read")
    sweep = SUBMISSIONS["sweep"].send(client)
    assert sweep.status_code == 202 and sweep.headers["Location"] == f"/api/v1/sweeps/{sweep.json['id']}"
    for job_id in made_jobs(sweep):
        assert client.post(f"/api/v1/jobs/{job_id}/cancel").json["status"] == "canceled"  # not only an admin
    with session_scope() as session:
        assert session.get(Sweep, sweep.json["id"]).token_id == token_id


def test_a_key_names_one_thing_a_job_key_reused_for_a_sweep_is_a_422(configured, models):
    client, _ = token_client(create_app(configured))
    assert SUBMISSIONS["train"].send(client, "shared").status_code == 202
    assert_error(SUBMISSIONS["sweep"].send(client, "shared"), 422, "Unprocessable", "Idempotency-Key")
    assert SUBMISSIONS["sweep"].send(client, "sweep-key").status_code == 202
    assert_error(SUBMISSIONS["train"].send(client, "sweep-key"), 422, "Unprocessable", "Idempotency-Key")


def test_the_cap_counts_jobs_the_token_made_before(configured, models):
    """A job already queued for the token (made by any endpoint) leaves no room under a cap of one."""
    client, token_id = token_client(create_app(replace(configured, max_active_jobs=1)))
    with session_scope() as session:
        jobs.create_score_job(session, model_ref="scorer", pieces=[[("a", "a.jpg")]], source={"type": "items"},
                              use_cache=True, chunk_size=10, token_id=token_id)
    for submission in SUBMISSIONS.values():
        assert_error(submission.send(client), 429, "TooManyRequests")
