"""Model imports as jobs: the POST stages the file and answers 202 at once; the import function (what the
maintenance worker runs) stores the version or fails the job with a reason that names no server path; a
redelivered task does nothing; the sweeper sends an import job that was committed but not sent."""
import json
import shutil
import time
from datetime import timedelta

from shared.core.db import session_scope
from shared.core.tables import Job, ModelVersion, utcnow
from shared.services import model_imports
from shared.services.model_registry import Signature
from tests.helpers import authorized_client
from worker import model_importer


def stage(settings, file, name: str, shown: str = "upload.keras") -> str:
    """What the web front does before it enqueues: the file in its staging place and a committed queued job."""
    job_id = model_imports.new_job_id()
    staged = model_imports.staging_path(settings.model_store, job_id)
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, staged)
    with session_scope() as session:
        model_imports.create_import_job(session, job_id, name=name, shown=shown, description=None, promote=None,
                                        token_id=None,
                                        signature=Signature(task="regression", input_height=32, input_width=32))
    return job_id


def described(job_id: str) -> dict:
    from shared.services import jobs

    with session_scope() as session:
        return jobs.job_json(session, session.get(Job, job_id))


def version_count(name: str) -> int:
    from sqlalchemy import func, select

    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.name == name))


def test_an_import_job_stores_the_version_once_even_when_its_task_is_delivered_twice(configured, model_files):
    job_id = stage(configured, model_files["regression"], "pageviews")
    assert model_importer.run_import(job_id, configured) == "succeeded"
    job = described(job_id)
    assert (job["kind"], job["status"], job["error"]) == ("import", "succeeded", None)
    assert job["model"]["result"] == "pageviews@1" and job["links"]["version"] == "/api/v1/models/pageviews/versions/1"
    assert job["progress"]["succeeded"] == 1 and job["progress"]["percent"] == 100.0
    assert not model_imports.staging_path(configured.model_store, job_id).exists()
    assert model_importer.run_import(job_id, configured) == "skipped"  # a redelivered message
    assert version_count("pageviews") == 1 and described(job_id)["model"]["result"] == "pageviews@1"


def test_an_unsafe_file_fails_its_job_with_the_reason_naming_the_upload_and_no_server_path(configured, model_files):
    job_id = stage(configured, model_files["unsafe"], "evil", shown="lambda.keras")
    assert model_importer.run_import(job_id, configured) == "failed"
    job = described(job_id)
    assert job["status"] == "failed" and job["model"]["result"] is None
    assert job["error"].startswith("lambda.keras") and "arbitrary Python code" in job["error"], job["error"]
    text = json.dumps(job)
    assert str(configured.model_store) not in text and ".staging" not in text and job_id + ".keras" not in text
    assert not model_imports.staging_path(configured.model_store, job_id).exists()
    assert version_count("evil") == 0
    assert model_importer.run_import(job_id, configured) == "skipped"
    assert described(job_id)["error"] == job["error"]


def test_the_post_answers_202_at_once_with_a_queued_import_job(configured, model_files, client):
    started = time.monotonic()
    with open(model_files["regression"], "rb") as fh:
        resp = client.post("/api/v1/models", content_type="multipart/form-data", data={
            "name": "pv", "task": "regression", "input_size": "32", "file": (fh, "pv.keras")})
    assert time.monotonic() - started < 5  # no inspection in the request (that alone takes 9-25 s)
    assert resp.status_code == 202, resp.json
    job_id = resp.json["id"]
    assert resp.headers["Location"] == f"/api/v1/jobs/{job_id}"
    assert (resp.json["kind"], resp.json["status"]) == ("import", "queued")
    assert resp.json["model"] == {"name": "pv", "file": "pv.keras", "result": None, "task": "regression"}
    assert model_imports.staging_path(configured.model_store, job_id).is_file()
    assert client.get(f"/api/v1/jobs/{job_id}").json["status"] == "queued"
    assert client.get("/api/v1/models/pv/versions").status_code == 404  # nothing registered yet

    assert model_importer.run_import(job_id, configured) == "succeeded"  # as the maintenance worker would
    job = client.get(f"/api/v1/jobs/{job_id}").json
    assert job["status"] == "succeeded" and job["model"]["result"] == "pv@1"
    assert client.get(job["links"]["version"]).json["aliases"] == ["production"]


def test_a_bad_import_request_is_a_400_and_stages_nothing(configured, model_files, client, app):
    with open(model_files["regression"], "rb") as fh:
        resp = client.post("/api/v1/models", content_type="multipart/form-data", data={
            "name": "cls", "task": "classification", "input_size": "32", "file": (fh, "c.keras")})
    assert resp.status_code == 400 and "class_names" in resp.json["error"]["message"]
    staging = model_imports.staging_dir(configured.model_store)
    assert not staging.exists() or not list(staging.iterdir())
    with open(model_files["regression"], "rb") as fh:
        resp = authorized_client(app, "read", "reader").post(
            "/api/v1/models", content_type="multipart/form-data",
            data={"name": "pv", "task": "regression", "input_size": "32", "file": (fh, "pv.keras")})
    assert resp.status_code == 403


def test_the_sweeper_sends_an_import_job_committed_but_not_sent(configured, model_files):
    from worker.sweeper import sweep

    job_id = stage(configured, model_files["regression"], "late")
    sent: list[str] = []

    def enqueue_imports(job_ids):
        sent.extend(job_ids)
        return len(job_ids)

    assert sweep(configured, lambda job, nos: 0, enqueue_imports=enqueue_imports)["sent"] == 0  # web's grace
    with session_scope() as session:
        session.get(Job, job_id).created_at = utcnow() - timedelta(minutes=5)
    assert sweep(configured, lambda job, nos: 0, enqueue_imports=enqueue_imports)["sent"] == 1
    assert sent == [job_id]
    with session_scope() as session:
        session.get(Job, job_id).enqueued_at = utcnow()
    assert sweep(configured, lambda job, nos: 0, enqueue_imports=enqueue_imports)["sent"] == 0
