"""Uploads in parts and the sweeper, on SQLite and PostgreSQL: an upload left alone and unused is removed (row and
folder) after IMGQ_ORPHAN_UPLOAD_AFTER, however old its folder looks; one a job took goes with that job's folder
after the retention. (The HTTP contract: test_error_shape.py; the CLI against a real server: test_remote_cli.py.)"""
import io
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from shared.core.db import session_scope
from shared.core.errors import NotFound
from shared.core.tables import Job, JobItem, Upload, utcnow
from shared.services import jobs, uploads
from tests.helpers import authorized_client, migrated_database, seed_version
from worker.sweeper import remove_old_uploads


def _upload_with(settings, *names: str) -> str:
    upload = uploads.new_upload(settings)["id"]
    uploads.add_files(settings, upload, [(name, io.BytesIO(name.encode())) for name in names])
    return upload


def _idle_for(upload: str, seconds: float) -> None:
    with session_scope() as session:
        session.execute(update(Upload).where(Upload.id == upload).values(
            updated_at=utcnow() - timedelta(seconds=seconds)))


def test_an_idle_unused_upload_is_removed_and_a_busy_one_kept_however_old_its_folder(configured):
    idle, busy = _upload_with(configured, "a.jpg"), _upload_with(configured, "b.jpg")
    _idle_for(idle, configured.orphan_upload_after + 60)
    old = time.time() - 10 * configured.orphan_upload_after
    os.utime(configured.upload_dir / busy, (old, old))  # mtime says orphan; its row says in use

    assert remove_old_uploads(configured) == 0
    assert uploads.remove_idle(configured, configured.orphan_upload_after) == 1
    assert not (configured.upload_dir / idle).exists() and (configured.upload_dir / busy / ".").exists()
    with pytest.raises(NotFound):
        uploads.get_upload(idle)
    assert uploads.get_upload(busy)["files"] == 1


def test_a_taken_upload_leaves_with_its_jobs_folder_after_the_retention(configured):
    seed_version("m")
    upload = _upload_with(configured, "a.jpg", "b.jpg")
    with session_scope() as session:
        items = uploads.take(session, configured, upload)
        job = jobs.create_score_job(session, model_ref="m", pieces=[items], use_cache=True, chunk_size=4,
                                    source={"type": "upload", "count": 2, "folder": upload, "upload": upload})
        uploads.mark_taken(session, upload, job.id)
        session.flush()
        job_id = job.id
    _idle_for(upload, configured.orphan_upload_after + 60)
    assert uploads.remove_idle(configured, configured.orphan_upload_after) == 0  # taken: the job's now
    assert [name for name, _ in items] == ["a.jpg", "b.jpg"]
    assert all(os.path.dirname(path) == str(configured.upload_dir / upload) for _, path in items)

    with session_scope() as session:
        row = session.get(Job, job_id)
        row.status, row.finished_at = "succeeded", utcnow() - timedelta(seconds=configured.upload_retention + 60)
    assert remove_old_uploads(configured) == 1
    assert not (configured.upload_dir / upload).exists()
    with pytest.raises(NotFound):
        uploads.get_upload(upload)


def _http_upload(client, files: dict[str, bytes]) -> str:
    upload = client.post("/api/v1/uploads").json["id"]
    part = client.post(f"/api/v1/uploads/{upload}/files", content_type="multipart/form-data",
                       data={"files": [(io.BytesIO(data), name) for name, data in files.items()]})
    assert part.status_code == 200 and part.json["added"] == len(files), part.json
    return upload


def test_an_embed_job_takes_an_uploads_files_in_one_category(client, configured):
    seed_version("embedder", task="embedding")
    upload = _http_upload(client, {"a.jpg": b"a", "shoes/b.jpg": b"b"})
    resp = client.post("/api/v1/jobs/embed", json={"model": "embedder", "catalog": "shop", "upload": upload,
                                                    "category": "coat"})
    assert resp.status_code == 202, resp.json
    assert resp.json["source"] == {"type": "upload", "count": 2, "folder": upload, "upload": upload}
    with session_scope() as session:
        items = session.execute(select(JobItem.item_id, JobItem.category, JobItem.uri)
                                .where(JobItem.job_id == resp.json["id"]).order_by(JobItem.item_id)).all()
    assert [(i, c) for i, c, _ in items] == [("a.jpg", "coat"), ("shoes/b.jpg", "coat")]
    assert [Path(uri).read_bytes() for _, _, uri in items] == [b"a", b"b"]
    assert client.get(f"/api/v1/uploads/{upload}").json["job"] == resp.json["id"]


def test_the_same_files_uploaded_again_under_the_same_key_replay_the_first_job(client, configured):
    seed_version("pageviews")
    files = {"a.jpg": b"a", "b.jpg": b"b"}
    key = {"Idempotency-Key": "crawl-2026-12-07"}
    first = client.post("/api/v1/jobs/score", headers=key,
                        json={"model": "pageviews", "upload": _http_upload(client, files)})
    again = client.post("/api/v1/jobs/score", headers=key,
                        json={"model": "pageviews", "upload": _http_upload(client, files)})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json["id"] == first.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/api/v1/jobs/score", headers=key,
                        json={"model": "pageviews", "upload": _http_upload(client, {**files, "c.jpg": b"c"})})
    assert other.status_code == 422 and other.json["error"]["problems"][0]["field"] == "Idempotency-Key"


def test_two_requests_taking_one_upload_at_once_make_one_job(app, client, configured):
    seed_version("pageviews")
    upload = _http_upload(client, {"a.jpg": b"a", "b.jpg": b"b"})
    start, answers = threading.Barrier(2), []

    def take():
        mine = authorized_client(app)
        start.wait()
        answers.append(mine.post("/api/v1/jobs/score", json={"model": "pageviews", "upload": upload}))

    threads = [threading.Thread(target=take) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(answer.status_code for answer in answers) == [202, 409]
    made = next(answer.json for answer in answers if answer.status_code == 202)
    refused = next(answer.json for answer in answers if answer.status_code == 409)
    assert refused["error"]["job"] == made["id"] and refused["error"]["problems"][0]["field"] == "upload"
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


@pytest.fixture
def in_a_bucket(monkeypatch, tmp_path, s3_server):
    """Settings on SQLite whose upload folder is a prefix of a bucket on a real S3 server (moto, loopback)."""
    from shared.core.config import get_settings
    from tests.helpers import configure_process

    for key, value in {**s3_server.env, "IMGQ_UPLOAD_DIR": "s3://upload-bucket/up/",
                       "IMGQ_ORPHAN_UPLOAD_AFTER": "1"}.items():
        monkeypatch.setenv(key, value)
    s3_server.put_files("upload-bucket", "", {})
    with migrated_database("sqlite", tmp_path) as url:
        yield configure_process(monkeypatch, tmp_path, url)
    get_settings.cache_clear()


def keys(server, folder: str = "") -> list[str]:
    listed = server.client().list_objects_v2(Bucket="upload-bucket", Prefix=f"up/{folder}")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_uploads_in_a_bucket_are_objects_read_by_their_job_and_swept_as_folders_are(in_a_bucket, s3_server):
    settings = in_a_bucket
    seed_version("m")
    idle, busy, taken = (_upload_with(settings, f"{n}.jpg") for n in ("idle", "busy", "taken"))
    s3_server.put_files("upload-bucket", "up/0123456789abcdef0123456789abcdef", {"cut-off.jpg": b"x"})
    assert len(keys(s3_server)) == 4 and not any(settings.upload_dir.rglob("*.jpg"))  # nothing on local disk
    with session_scope() as session:
        items = uploads.take(session, settings, taken)
        job = jobs.create_score_job(session, model_ref="m", pieces=[items], use_cache=True, chunk_size=4,
                                    source={"type": "upload", "count": 1, "folder": taken, "upload": taken})
        uploads.mark_taken(session, taken, job.id)
        job_id = job.id
    assert [uri.rsplit("/", 1)[0] for _, uri in items] == [f"s3://upload-bucket/up/{taken}"]
    from shared.images.item_reads import Places, read_item

    places = Places.of(settings, taken)  # the job's own folder, and only it
    assert bytes(read_item(items[0][1], places, 100)[0]) == b"taken.jpg"
    other = keys(s3_server, busy)[0]
    with pytest.raises(Exception, match="outside the data roots"):
        read_item(f"s3://upload-bucket/{other}", places, 100)

    time.sleep(1.5)  # past IMGQ_ORPHAN_UPLOAD_AFTER for the folder no row owns
    _idle_for(idle, settings.orphan_upload_after + 60)
    _idle_for(busy, 0)  # added to just now
    assert uploads.remove_idle(settings, settings.orphan_upload_after) == 1
    assert remove_old_uploads(settings) == 1  # the cut-off folder; the busy one is owned, the taken one is in use
    assert keys(s3_server, idle) == [] and keys(s3_server, "0123456789abcdef") == []
    assert len(keys(s3_server, busy)) == 1 and len(keys(s3_server, taken)) == 1
    with session_scope() as session:
        row = session.get(Job, job_id)
        row.status, row.finished_at = "succeeded", utcnow() - timedelta(seconds=settings.upload_retention + 60)
    assert remove_old_uploads(settings) == 1
    assert keys(s3_server, taken) == [] and len(keys(s3_server, busy)) == 1
