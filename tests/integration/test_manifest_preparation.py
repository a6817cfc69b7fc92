"""Large manifests read off the request thread (shared/services/preparation.py, worker/manifest_expansion.py), on
SQLite and PostgreSQL for real: the 202 comes with the job preparing, the maintenance worker's reader (run here as
its plain function, no Celery) fills in its items and chunks, and real score tasks (run_chunk, a stand-in model)
score every item once. IMGQ_INLINE_MANIFEST_BYTES is 0 here, so a small manifest takes the large one's path."""
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import Chunk, Job, JobItem, ModelVersion, Result
from shared.images.imaging import Preprocessing
from shared.images.manifests import source_pieces
from shared.schemas.responses.jobs import ScoreJob
from shared.services import jobs
from shared.services.model_registry import set_alias, signature_of
from tests.helpers import assert_error, authorized_client
from web.app import create_app
from worker.manifest_expansion import run_preparation
from worker.model_cache import ModelCache
from worker.run_chunk import run_chunk
from worker.sweeper import sweep

ROWS = 30
PIECE = 7  # the reader's pieces here (5,000 rows in production), so a 30-row manifest is read in five


class MeanModel:
    """A stand-in regression model: an image's mean pixel value (0..1)."""

    def __init__(self, version):
        self.version_id = version.id
        self.signature = signature_of(version)
        self.preprocessing = Preprocessing(height=8, width=8, pixel_scale="unit")

    def predict(self, batch):
        return np.asarray(batch, dtype=np.float64).mean(axis=(1, 2, 3))[:, None] / 255.0


@pytest.fixture
def settings(configured):
    with session_scope() as s:
        s.add(ModelVersion(name="means", version=1, task="regression", input_height=8, input_width=8,
                           resize_mode="stretch", pixel_scale="unit", output_names=["value"],
                           target_transform={"kind": "none"}, path="/nowhere", sha256="0" * 64, size_bytes=1))
        s.flush()
        set_alias(s, "means", "production", 1)
    return replace(configured, inline_manifest_bytes=0, chunk_size=4)


@pytest.fixture
def client(settings):
    return authorized_client(create_app(settings))


def write_manifest(settings, rows: list[tuple[str, str]], name="big.csv") -> str:
    root = settings.data_roots[0]
    for i in range(ROWS):
        Image.new("RGB", (12, 10), (8 * i, 8 * i, 8 * i)).save(root / f"p{i:02d}.png")
    (root / name).write_text("id,path\n" + "".join(f"{item},{path}\n" for item, path in rows))
    return name


def good_rows():
    return [(f"item{i:02d}", f"p{i:02d}.png") for i in range(ROWS)]


def small_pieces(settings, source):
    """The manifest's rows in pieces of PIECE."""
    rows = [row for piece in source_pieces(settings, source) for row in piece]
    for start in range(0, len(rows), PIECE):
        yield rows[start:start + PIECE]


def killed_after(pieces: int):
    """A reader whose worker dies after recording `pieces` pieces."""
    def read(settings, source):
        for n, piece in enumerate(small_pieces(settings, source)):
            if n == pieces:
                raise SystemExit("worker killed")
            yield piece
    return read


class Sent:
    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)
        return len(args[-1])


def submit(client, manifest, expect=202) -> dict:
    resp = client.post("/api/v1/jobs/score", json={"model": "means", "manifest": manifest, "id_column": "id",
                                                   "image_column": "path", "cache": False})
    assert resp.status_code == expect, resp.json
    return resp.json


def item_ids(job_id) -> list[str]:
    with session_scope() as s:
        return list(s.scalars(select(JobItem.item_id).where(JobItem.job_id == job_id)))


def described(job_id) -> dict:
    with session_scope() as s:
        return jobs.job_json(s, jobs.get_job(s, job_id))


def test_a_large_manifest_answers_preparing_at_once_and_every_item_is_scored_once(settings, client):
    job = submit(client, write_manifest(settings, good_rows()))
    ScoreJob.model_validate(job)
    assert job["status"] == "preparing" and job["progress"]["rows_read"] == 0 and job["progress"]["total"] == 0
    assert item_ids(job["id"]) == [] and job["chunks"]["total"] == 0
    listed = client.get("/api/v1/jobs?status=preparing").json["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]

    sent = Sent()
    assert run_preparation(job["id"], settings, read_pieces=small_pieces, enqueue=sent) == "queued"
    ready = described(job["id"])
    assert (ready["status"], ready["progress"]["total"], ready["progress"]["rows_read"]) == ("queued", ROWS, ROWS)
    assert sent.calls == [(job["id"], list(range(8)))] and ready["chunks"]["total"] == 8

    models = ModelCache(1, loader=MeanModel)
    for no in range(8):
        assert run_chunk(job["id"], no, worker="w", models=models, settings=settings) in ("done", "chunk already done")
    final = described(job["id"])
    assert final["status"] == "succeeded" and final["progress"]["done"] == ROWS
    with session_scope() as s:
        results = s.execute(select(Result.item_id, Result.status).where(Result.job_id == job["id"])).all()
    assert sorted(results) == [(item, "ok") for item, _ in good_rows()]


def failed_and_refused(settings, rows, read_pieces) -> tuple[dict, dict]:
    """The job of a large manifest of `rows` once read, and the error the same manifest gets when read inline."""
    manifest = write_manifest(settings, rows)
    job = submit(authorized_client(create_app(settings)), manifest)
    assert run_preparation(job["id"], settings, read_pieces=read_pieces, enqueue=Sent()) == "failed"
    inline = authorized_client(create_app(replace(settings, inline_manifest_bytes=1 << 20)))
    return described(job["id"]), submit(inline, manifest, expect=400)["error"]


def test_a_row_without_an_id_part_way_fails_the_job_with_the_reason_the_request_would_get(settings):
    rows = [(f"item{i:03d}", f"p{i % ROWS:02d}.png") for i in range(150)]
    rows[120] = ("", "p20.png")  # past the rows the request checks; the reader stores 17 pieces before it
    job, refused = failed_and_refused(settings, rows, small_pieces)
    assert refused["message"] == "manifest has empty values in 'id' or 'path'"
    assert (job["status"], job["error"]) == ("failed", refused["message"])
    assert item_ids(job["id"]) == [] and job["chunks"]["total"] == 0


def test_a_duplicate_id_fails_the_job_with_the_reason_the_request_would_get(settings):
    rows = good_rows()
    rows[20] = ("item03", "p20.png")
    job, refused = failed_and_refused(settings, rows, source_pieces)  # the pieces the request reads
    assert refused["message"].startswith("item ids must be unique within a job")
    assert (job["status"], job["error"]) == ("failed", refused["message"])
    assert item_ids(job["id"]) == [] and job["chunks"]["total"] == 0


def test_a_manifest_with_a_missing_column_is_still_refused_at_once_with_nothing_stored(settings, client):
    (settings.data_roots[0] / "cols.csv").write_text("id,picture\na,p00.png\n")
    resp = client.post("/api/v1/jobs/score", json={"model": "means", "manifest": "cols.csv", "id_column": "id",
                                                   "image_column": "path"})
    assert "no column 'path'" in assert_error(resp, 400, "InvalidRequest", "image_column")["message"]
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_a_preparation_killed_part_way_and_run_again_neither_loses_nor_duplicates_items(settings, client):
    job = submit(client, write_manifest(settings, good_rows()))
    with pytest.raises(SystemExit):
        run_preparation(job["id"], settings, read_pieces=killed_after(2), enqueue=Sent())
    half = described(job["id"])
    assert (half["status"], half["progress"]["rows_read"]) == ("preparing", 2 * PIECE)
    assert len(item_ids(job["id"])) == 2 * PIECE

    assert run_preparation(job["id"], settings, read_pieces=small_pieces, enqueue=Sent()) == "queued"
    assert sorted(item_ids(job["id"])) == [item for item, _ in good_rows()]
    with session_scope() as s:
        counts = list(s.scalars(select(Chunk.item_count).where(Chunk.job_id == job["id"]).order_by(Chunk.chunk_no)))
    assert counts == [4] * 7 + [2]
    assert run_preparation(job["id"], settings, read_pieces=small_pieces, enqueue=Sent()) == "skipped"
    assert len(item_ids(job["id"])) == ROWS


def age(job_id, seconds, *columns):
    with session_scope() as s:
        job = s.get(Job, job_id)
        for column in columns:
            setattr(job, column, getattr(job, column) - timedelta(seconds=seconds))


def test_the_sweeper_sends_a_preparation_never_sent_or_whose_worker_died(settings, client, monkeypatch):
    monkeypatch.setattr("shared.core.dispatch._send_each", lambda task, queue, job_ids, what: [])  # broker down
    job = submit(client, write_manifest(settings, good_rows()))
    resent = Sent()
    assert sweep(settings, Sent(), enqueue_preparation=resent)["sent"] == 0  # too fresh: the web front sends it
    age(job["id"], 60, "created_at")
    assert sweep(settings, Sent(), enqueue_preparation=resent)["sent"] == 1 and resent.calls == [([job["id"]],)]

    monkeypatch.undo()
    with pytest.raises(SystemExit):  # sent, started, and its worker died
        run_preparation(job["id"], settings, read_pieces=killed_after(1), enqueue=Sent())
    with session_scope() as s:
        s.get(Job, job["id"]).enqueued_at = s.get(Job, job["id"]).heartbeat_at
    resent.calls.clear()
    assert sweep(settings, Sent(), enqueue_preparation=resent)["sent"] == 0  # its progress is recent
    age(job["id"], settings.heartbeat_timeout + 5, "heartbeat_at", "enqueued_at")
    assert sweep(settings, Sent(), enqueue_preparation=resent)["sent"] == 1 and resent.calls == [([job["id"]],)]
    assert run_preparation(job["id"], settings, read_pieces=small_pieces, enqueue=Sent()) == "queued"
    assert sorted(item_ids(job["id"])) == [item for item, _ in good_rows()]


def test_a_job_canceled_while_preparing_stops_its_reader(settings, client):
    job = submit(client, write_manifest(settings, good_rows()))

    def cancel_after_first_piece(settings, source):
        for n, piece in enumerate(small_pieces(settings, source)):
            if n == 1:
                assert client.post(f"/api/v1/jobs/{job['id']}/cancel").json["status"] == "canceled"
            yield piece

    sent = Sent()
    assert run_preparation(job["id"], settings, read_pieces=cancel_after_first_piece, enqueue=sent) == "skipped"
    canceled = described(job["id"])
    assert canceled["status"] == "canceled" and canceled["progress"]["rows_read"] == PIECE
    assert canceled["chunks"]["total"] == 0 and sent.calls == []
    assert run_preparation(job["id"], settings, read_pieces=small_pieces, enqueue=sent) == "skipped"


def test_a_large_embed_manifest_is_prepared_with_each_items_category(settings, client):
    with session_scope() as s:
        s.add(ModelVersion(name="vecs", version=1, task="embedding", input_height=8, input_width=8,
                           resize_mode="stretch", pixel_scale="unit", output_names=["vector"],
                           target_transform={"kind": "none"}, path="/nowhere", sha256="0" * 64, size_bytes=1))
        s.flush()
        set_alias(s, "vecs", "production", 1)
    write_manifest(settings, [])
    (settings.data_roots[0] / "shop.csv").write_text(
        "id,path,kind\n" + "".join(f"item{i:02d},p{i:02d}.png,{'shoe' if i % 2 else ''}\n" for i in range(ROWS)))
    resp = client.post("/api/v1/jobs/embed", json={"model": "vecs", "catalog": "shop", "manifest": "shop.csv",
                                                   "id_column": "id", "image_column": "path",
                                                   "category_column": "kind"})
    assert resp.status_code == 202 and resp.json["status"] == "preparing", resp.json
    assert run_preparation(resp.json["id"], settings, read_pieces=small_pieces, enqueue=Sent()) == "queued"
    with session_scope() as s:
        categories = dict(s.execute(select(JobItem.item_id, JobItem.category)
                                    .where(JobItem.job_id == resp.json["id"])).all())
    assert categories == {f"item{i:02d}": "shoe" if i % 2 else None for i in range(ROWS)}
    assert described(resp.json["id"])["embedding"]["catalog"] == "shop"


def test_a_preparing_job_counts_against_the_tokens_cap_and_its_key_replays_it(settings):
    client = authorized_client(create_app(replace(settings, max_active_jobs=1)))
    manifest = write_manifest(settings, good_rows())
    body = {"model": "means", "manifest": manifest, "id_column": "id", "image_column": "path"}
    first = client.post("/api/v1/jobs/score", json=body, headers={"Idempotency-Key": "big-1"})
    again = client.post("/api/v1/jobs/score", json=body, headers={"Idempotency-Key": "big-1"})
    assert (first.status_code, again.status_code) == (202, 202) and first.json["status"] == "preparing"
    assert again.json["id"] == first.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert_error(client.post("/api/v1/jobs/score", json=body), 429, "TooManyRequests")
