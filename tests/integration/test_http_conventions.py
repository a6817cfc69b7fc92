"""Conventions of the HTTP surface, through the app factory on SQLite and PostgreSQL: every DELETE answers 204 with
no body; a train job's metrics per epoch live at /jobs/<id>/epochs, and the old /jobs/<id>/metrics answers the same
for one release, marked deprecated."""
from __future__ import annotations

import io

import pytest

from shared.core.db import session_scope
from shared.core.states import JobKind, JobStatus
from shared.core.tables import Job, Schedule, TrainMetric
from shared.services import uploads
from tests.helpers import assert_error, seed_embeddings, seed_version

TRAIN = {"model": "cats", "task": "classification", "input_size": 32, "epochs": 3,
         "dataset": {"path": "cats/items.csv", "label_column": "label"}, "base": {"architecture": "vgg"}}


@pytest.fixture
def things(configured):
    """A schedule, a catalog with items and an upload holding a file: what the DELETE endpoints remove."""
    seed_embeddings("shop", seed_version("embedder", task="embedding"), "embedder@1", 3)
    upload = uploads.new_upload(configured)["id"]
    uploads.add_files(configured, upload, [("a.jpg", io.BytesIO(b"a"))])
    with session_scope() as session:
        row = Schedule(name="nightly", cron="0 2 * * *", timezone="UTC", model_name="cats", train={}, gate={})
        session.add(row)
        session.flush()
        return {"schedule": row.id, "upload": upload, "upload_folder": configured.upload_dir / upload}


def _items_left(client) -> int:
    return client.get("/api/v1/catalogs/shop").json["spaces"][0]["items"]


# the DELETE URL, the URL that shows it is gone (404) or a check that it is
DELETES = [
    ("/api/v1/schedules/{schedule}", lambda client, ids: client.get(f"/api/v1/schedules/{ids['schedule']}")
     .status_code == 404),
    ("/api/v1/catalogs/shop/items/item-1", lambda client, ids: _items_left(client) == 2),
    ("/api/v1/uploads/{upload}", lambda client, ids: client.get(f"/api/v1/uploads/{ids['upload']}")
     .status_code == 404 and not ids["upload_folder"].exists()),
]


@pytest.mark.parametrize("template, gone", DELETES, ids=["schedule", "catalog-item", "upload"])
def test_every_delete_answers_204_with_no_body(client, things, template, gone):
    resp = client.delete(template.format(**things))
    assert resp.status_code == 204 and resp.get_data() == b"" and resp.content_length in (None, 0)
    assert gone(client, things)


def test_the_delete_table_names_every_delete(app):
    deletes = {rule.rule for rule in app.url_map.iter_rules() if "DELETE" in rule.methods}
    assert deletes == {"/api/v1/schedules/<int:schedule_id>", "/api/v1/catalogs/<catalog>/items/<path:item_id>",
                       "/api/v1/uploads/<upload_id>"}


def test_deleting_an_unknown_item_schedule_or_upload_is_a_404(client, things):
    assert_error(client.delete("/api/v1/catalogs/shop/items/nope"), 404, "NotFound")
    assert_error(client.delete("/api/v1/schedules/999"), 404, "NotFound")
    assert_error(client.delete("/api/v1/uploads/nope"), 404, "NotFound")


def test_a_deleted_item_deleted_again_is_still_a_204(client, things):
    assert client.delete("/api/v1/catalogs/shop/items/item-1").status_code == 204
    assert client.delete("/api/v1/catalogs/shop/items/item-1").status_code == 204
    assert _items_left(client) == 2


def test_epochs_and_the_deprecated_metrics_path_answer_the_same(client, configured):
    job = client.post("/api/v1/jobs/train", json=TRAIN)
    assert job.status_code == 202, job.json
    job_id = job.json["id"]
    assert job.json["links"]["epochs"] == f"/api/v1/jobs/{job_id}/epochs"
    with session_scope() as session:
        session.add_all(TrainMetric(job_id=job_id, epoch=epoch, metrics={"loss": 1.0 / epoch}, seconds=2.0)
                        for epoch in (1, 2))
    epochs = client.get(f"/api/v1/jobs/{job_id}/epochs")
    assert epochs.status_code == 200 and "Deprecation" not in epochs.headers
    assert [e["epoch"] for e in epochs.json["epochs"]] == [1, 2] and epochs.json["epochs"][1]["loss"] == 0.5
    assert epochs.json["job_id"] == job_id and epochs.json["progress"]["epochs"] == 3
    old = client.get(f"/api/v1/jobs/{job_id}/metrics")
    assert old.status_code == 200 and old.json == epochs.json
    assert old.headers["Deprecation"] == "true"
    assert old.headers["Link"] == f'</api/v1/jobs/{job_id}/epochs>; rel="successor-version"'


def test_epochs_of_a_job_that_does_not_train_or_does_not_exist_are_4xx(client, configured):
    seed_version("scorer")
    job = client.post("/api/v1/jobs/score", json={"model": "scorer", "items": [{"id": "a", "uri": "a.jpg"}]})
    assert "epochs" not in job.json["links"]
    assert_error(client.get(f"/api/v1/jobs/{job.json['id']}/epochs"), 400, "InvalidRequest")
    assert_error(client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000/epochs"), 404, "NotFound")


def test_a_train_jobs_results_are_empty_as_json_and_as_csv(client, configured):
    """A job of a kind without items (here a train job from an architecture: no model version) has no results:
    an empty page, and a CSV of the header alone, never a 500."""
    with session_scope() as session:
        session.add(Job(id="11111111-1111-1111-1111-111111111111", kind=JobKind.TRAIN, status=JobStatus.QUEUED,
                        model_ref="cats", source={"type": "train"}))
    url = "/api/v1/jobs/11111111-1111-1111-1111-111111111111/results"
    assert client.get(url).json["results"] == []
    resp = client.get(f"{url}?format=csv")
    assert resp.status_code == 200 and resp.get_data(as_text=True).splitlines() == ["id,status,error,from_cache"]
