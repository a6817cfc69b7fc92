"""Workers as on other machines: each worker process has an IMGQ_HOME of its own (so its own model cache and
checkpoint folders), and shares with the web front and the maintenance process only PostgreSQL, Redis and buckets of
a real S3 server (moto's server mode on loopback, reached through a TCP proxy a test may cut): the model store, the
upload folder and the crawl. A train job on a dataset in the crawl bucket, killed mid-run on one worker, resumes on
the other from the checkpoint in the store; its new version is stored in the bucket and scores on the other worker
through that worker's own cache.
Uploaded files (in parts, or in one request) go to the bucket, never to the web front's disk, and score on a worker
that shares no folder with the web front. The store away for 15 s mid-job costs no item and no attempt."""
from __future__ import annotations

import shutil
import time
import uuid

import numpy as np
import pytest
from sqlalchemy import select

from shared.core.db import session_scope
from shared.core.tables import Chunk, ModelVersion, TrainRun
from tests.helpers import (
    REDIS_BASE,
    MotoS3,
    TcpProxy,
    create_pg_database,
    import_model_http,
    make_stack,
    stop_with_database,
    store_away_mid_job,
    tiny_cnn,
    write_jpeg,
)

pytestmark = pytest.mark.integration

MODEL_STORE = "s3://model-bucket/store/"
CRAWL = "s3://crawl-bucket/2026/"
UPLOADS = "s3://upload-bucket/uploads/"


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    """Web front and maintenance on the "main host" home; workers `w1` and `w2` (not started) with homes of
    their own; 600 scikit-learn digits as PNG files with a CSV in the crawl bucket."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from shared.core.migrate import upgrade

    tmp = tmp_path_factory.mktemp("machines")
    server = MotoS3(tmp / "moto")
    server.put_files("model-bucket", "", {})
    server.put_files("upload-bucket", "", {})
    url = create_pg_database()
    upgrade(url)
    proxy = TcpProxy(server.port)  # the way to the store, which a test may cut
    stack = make_stack(tmp, {"DATABASE_URL": url, "BROKER_URL": f"{REDIS_BASE}/9", **server.env,
                             "IMGQ_S3_ENDPOINT_URL": proxy.endpoint,
                             "IMGQ_DATA_ROOTS": f"{tmp / 'data'}:{CRAWL}",
                             "IMGQ_BROKER_PREFIX": f"imgq-machines-{uuid.uuid4().hex[:8]}:",
                             "IMGQ_MODEL_STORE": MODEL_STORE, "IMGQ_UPLOAD_DIR": UPLOADS,
                             "IMGQ_HOME": str(tmp / "main-home")})
    for name in ("w1", "w2"):
        stack.process_env[name] = {"IMGQ_HOME": str(tmp / f"{name}-home")}
    stack.homes = {name: tmp / f"{name}-home" for name in ("w1", "w2")}
    digits = load_digits()
    folder = tmp / "digits"  # made here, then put in the crawl bucket: no process reads this folder
    folder.mkdir(parents=True)
    lines = ["id,image,label"]
    for i in range(600):
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), "L").save(folder / f"d{i:04d}.png")
        lines.append(f"digit-{i:04d},d{i:04d}.png,{digits.target[i]}")
    (folder / "digits.csv").write_text("\n".join(lines) + "\n")
    server.put_files("crawl-bucket", "2026/digits", {p.name: p for p in folder.iterdir()})
    stack.database_url, stack.s3, stack.proxy, stack.main_home = url, server, proxy, tmp / "main-home"
    try:
        stack.authenticate()
        stack.start_web()
        stack.start_maintenance()
        stack.wait_healthy(120)
        yield stack
    finally:
        stop_with_database(stack, url, proxy, server)
        shutil.rmtree(tmp / "data", ignore_errors=True)


def version_lineage(stack, name: str) -> dict:
    return stack.http.get(stack.url(f"/api/v1/models/{name}/versions/1"), timeout=10).json()["lineage"]


def keys_under(server, prefix: str, bucket: str = "model-bucket") -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_a_train_job_killed_on_one_machine_resumes_on_another_from_the_checkpoint_in_the_store(machines):
    name = f"digits-{uuid.uuid4().hex[:6]}"
    machines.start_worker("w1")
    resp = machines.http.post(machines.url("/api/v1/jobs/train"), timeout=120, json={
        "model": name, "task": "classification", "input_size": 32, "epochs": 8, "batch_size": 32,
        "dataset": {"path": f"{CRAWL}digits/digits.csv", "image_column": "image", "id_column": "id",
                    "label_column": "label"},
        "base": {"architecture": "vgg", "width": 8}, "optimizer": {"name": "adam", "learning_rate": 0.002}})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    deadline = time.time() + 300
    while True:
        progress = machines.http.get(machines.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["progress"]
        if progress["checkpoint_epoch"] >= 2:
            break
        assert time.time() < deadline, progress
        time.sleep(0.3)
    with session_scope(machines.database_url) as session:
        recorded = session.scalars(select(TrainRun.checkpoint_path).where(TrainRun.job_id == job_id)).one()
    assert recorded.startswith(f"{MODEL_STORE}checkpoints/{job_id}/attempt-1/epoch-")
    machines.kill_worker("w1")  # SIGKILL: the worker, its pool process and the training process
    machines.workers.pop("w1")
    machines.start_worker("w2")  # another machine: w1's folders are not there for it
    job = machines.wait_job(job_id, timeout=600, poll=1.0)
    assert job["status"] == "succeeded", job
    assert job["progress"]["resumed_from_epoch"] >= 2 and job["progress"]["attempts"] == 2
    epochs = machines.http.get(machines.url(f"/api/v1/jobs/{job_id}/epochs"), timeout=30).json()["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, 9))  # no gap, no duplicate
    assert "resuming from checkpoint " + f"{MODEL_STORE}checkpoints/{job_id}/attempt-1/" in \
        (machines.homes["w2"] / "train-logs" / f"{job_id}.log").read_text()
    # the checkpoints are gone from the store once the version is registered, and the version is in the bucket
    assert keys_under(machines.s3, f"store/checkpoints/{job_id}/") == []
    with session_scope(machines.database_url) as session:
        version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).one()
        path, sha256 = version.path, version.sha256
    assert path.startswith(f"{MODEL_STORE}{name}/")
    assert version_lineage(machines, name)["dataset"]["path"] == f"{CRAWL}digits/digits.csv"
    assert keys_under(machines.s3, f"store/{name}/") == [path.removeprefix("s3://model-bucket/")]
    key = path.removeprefix("s3://model-bucket/")
    assert [p.name for p in (machines.homes["w2"] / "model-cache").glob("*.keras")] == [f"{sha256}.keras"]
    assert not any((machines.homes["w2"] / "models").rglob("*.keras"))  # registered from w2: its cache, not twice

    # the new version scores on w1 (back, and w2 gone) through w1's own cache: one download, then none
    machines.kill_worker("w2")
    machines.workers.pop("w2")
    machines.start_worker("w1")
    files = [f"{CRAWL}digits/d{i:04d}.png" for i in range(590, 600)]
    for round_no in range(2):
        resp = machines.http.post(machines.url("/api/v1/jobs/score"), timeout=60, json={
            "model": f"{name}@1", "cache": False, "items": [{"id": f"r{round_no}-{f}", "uri": f} for f in files]})
        assert resp.status_code == 202, resp.text
        scored = machines.wait_job(resp.json()["id"], timeout=240)
        assert scored["status"] == "succeeded" and scored["progress"]["done"] == 10, scored
    assert [p.name for p in (machines.homes["w1"] / "model-cache").glob("*.keras")] == [f"{sha256}.keras"]
    assert machines.s3.gets_of("model-bucket", key) == 1


def test_the_store_away_for_15_s_mid_job_loses_no_item_and_turns_none_into_an_error(machines, tmp_path):
    photos = {f"p{i:02d}.jpg": write_jpeg(tmp_path / f"p{i:02d}.jpg", seed=i) for i in range(40)}
    machines.s3.put_files("crawl-bucket", "2026/outage", photos)
    file = tmp_path / "scorer.keras"
    tiny_cnn(32, 1).save(file)
    name = f"scorer-{uuid.uuid4().hex[:6]}"
    import_model_http(machines, file, name)
    if not machines.workers:
        machines.start_worker("w1")
    items = [{"id": f"item-{n:04d}", "uri": f"{CRAWL}outage/p{n % 40:02d}.jpg"} for n in range(1200)]
    resp = machines.http.post(machines.url("/api/v1/jobs/score"), timeout=60,
                              json={"model": name, "cache": False, "items": items})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    done = store_away_mid_job(machines, job_id, machines.proxy, 15)
    assert done < 1200  # the outage came while items were left to read
    job = machines.wait_job(job_id, timeout=300)
    assert job["status"] == "succeeded", job
    assert (job["progress"]["done"], job["progress"]["failed"]) == (1200, 0), job["progress"]
    results = machines.all_results(job_id)
    assert sorted(r["id"] for r in results) == [i["id"] for i in items]  # each once
    assert all(r["status"] == "ok" for r in results)
    with session_scope(machines.database_url) as session:
        attempts = session.scalars(select(Chunk.attempts).where(Chunk.job_id == job_id)).all()
    assert max(attempts) == 1  # waited out, not retried: the outage used no chunk's attempts
    logs = "".join((machines.log_dir / f"{w}.log").read_text() for w in machines.workers)
    assert "object store away" in logs


def test_uploads_go_to_the_store_and_score_on_a_worker_that_shares_no_folder_with_the_web_front(machines, tmp_path):
    import io

    photos = {f"shot-{i}.jpg": write_jpeg(tmp_path / f"shot-{i}.jpg", seed=100 + i).read_bytes() for i in range(6)}
    file = tmp_path / "uploads-scorer.keras"
    tiny_cnn(32, 1, seed=3).save(file)
    name = f"uploads-{uuid.uuid4().hex[:6]}"
    import_model_http(machines, file, name)
    if not machines.workers:
        machines.start_worker("w1")
    http = machines.http
    # in parts: two requests, then a job that takes the upload
    upload = http.post(machines.url("/api/v1/uploads"), timeout=30).json()["id"]
    names = sorted(photos)
    for part in (names[:3], names[3:]):
        resp = http.post(machines.url(f"/api/v1/uploads/{upload}/files"), timeout=60,
                         files=[("files", (n, io.BytesIO(photos[n]), "image/jpeg")) for n in part])
        assert resp.status_code == 200 and resp.json()["added"] == 3, resp.text
    assert len(keys_under(machines.s3, f"uploads/{upload}/", "upload-bucket")) == 6
    resp = http.post(machines.url("/api/v1/jobs/score"), json={"model": name, "upload": upload, "cache": False},
                     timeout=60)
    assert resp.status_code == 202, resp.text
    in_parts = machines.wait_job(resp.json()["id"], timeout=240)
    # in one request
    resp = http.post(machines.url("/api/v1/jobs/score"), data={"model": name, "cache": "false"}, timeout=60,
                     files=[("files", (n, io.BytesIO(photos[n]), "image/jpeg")) for n in names])
    assert resp.status_code == 202, resp.text
    at_once = machines.wait_job(resp.json()["id"], timeout=240)
    results = []
    for job in (in_parts, at_once):
        assert job["status"] == "succeeded" and (job["progress"]["done"], job["progress"]["failed"]) == (6, 0), job
        results.append({r["id"]: r["outputs"] for r in machines.all_results(job["id"])})
    assert results[0] == results[1] and sorted(results[0]) == names
    uploaded = [p for p in (machines.main_home / "uploads").rglob("*") if p.is_file()]
    assert uploaded == []  # nothing of them on the web front's disk
    thumb = http.get(machines.url(f"/api/v1/jobs/{at_once['id']}/items/{names[0]}/thumbnail"), timeout=30)
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8", thumb.text[:200]
    # an unused upload deleted: its objects go with it
    unused = http.post(machines.url("/api/v1/uploads"), timeout=30).json()["id"]
    http.post(machines.url(f"/api/v1/uploads/{unused}/files"), timeout=60,
              files=[("files", ("x.jpg", io.BytesIO(photos[names[0]]), "image/jpeg"))]).raise_for_status()
    assert len(keys_under(machines.s3, f"uploads/{unused}/", "upload-bucket")) == 1
    assert http.delete(machines.url(f"/api/v1/uploads/{unused}"), timeout=30).status_code == 204
    assert keys_under(machines.s3, f"uploads/{unused}/", "upload-bucket") == []


def test_a_train_job_on_the_bucket_learns_exactly_what_the_same_job_on_local_files_learns(machines):
    """The same deterministic request (same name, so the same split) on the crawl bucket and on a local copy of its
    files: the same epochs' losses and the same holdout metrics, whichever place the pixels came from."""
    local = machines.data / "digits-copy"
    local.mkdir(parents=True, exist_ok=True)
    for key in keys_under(machines.s3, "2026/digits/", "crawl-bucket"):
        body = machines.s3.client().get_object(Bucket="crawl-bucket", Key=key)["Body"].read()
        (local / key.rsplit("/", 1)[1]).write_bytes(body)
    if not machines.workers:
        machines.start_worker("w1")
    name = f"same-{uuid.uuid4().hex[:6]}"
    learned = []
    for dataset in (f"{CRAWL}digits/digits.csv", "digits-copy/digits.csv"):
        resp = machines.http.post(machines.url("/api/v1/jobs/train"), timeout=120, json={
            "model": name, "task": "classification", "input_size": 32, "epochs": 2, "batch_size": 32, "seed": 7,
            "deterministic": True, "base": {"architecture": "vgg", "width": 8},
            "dataset": {"path": dataset, "image_column": "image", "id_column": "id", "label_column": "label"}})
        assert resp.status_code == 202, resp.text
        job = machines.wait_job(resp.json()["id"], timeout=600, poll=1.0)
        assert job["status"] == "succeeded", job
        epochs = machines.http.get(machines.url(f"/api/v1/jobs/{job['id']}/epochs"), timeout=30).json()["epochs"]
        learned.append(([(e["epoch"], e["loss"], e["val_loss"]) for e in epochs], job["holdout_metrics"],
                        job["data"]["split_sizes"]))
    (bucket_epochs, bucket_holdout, bucket_sizes), (local_epochs, local_holdout, local_sizes) = learned
    assert bucket_sizes == local_sizes and sum(bucket_sizes.values()) == 600
    assert [e[0] for e in bucket_epochs] == [1, 2]
    assert bucket_epochs == local_epochs and bucket_holdout == local_holdout
