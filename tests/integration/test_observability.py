"""Metrics and logs of real processes on PostgreSQL and Redis: the web front, a worker and the maintenance process,
each worker tree serving /metrics on its own port (shared/core/prometheus.py) and every process logging JSON.

Read over HTTP and from the processes' log files, never from inside them: the worker's counters grow by what a job
scored and failed (by reason class), the maintenance process's queue depth falls as a job drains, a chunk's lines
carry its job and chunk, a similar-image query's vector appears in no line, and the web access lines name route,
status and duration but never the token. No timing is asserted.
"""
from __future__ import annotations

import json
import re
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from shared.core.migrate import upgrade
from tests.helpers import (
    REDIS_BASE,
    create_pg_database,
    drop_pg_database,
    import_model_http,
    make_stack,
    tiny_cnn,
    write_jpeg,
)

pytestmark = pytest.mark.integration

MODEL = "observed"
CHUNK = 16  # tests/helpers.STACK_ENV


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Web front and maintenance started; the worker is started by the first test, once a job waits for it."""
    url = create_pg_database()
    upgrade(url)
    # a Redis database of its own (the session's pg_stack empties database 9 when it starts) and a key prefix
    stack = make_stack(tmp_path_factory.mktemp("observed-stack"), {
        "DATABASE_URL": url, "BROKER_URL": f"{REDIS_BASE}/11",
        "IMGQ_BROKER_PREFIX": f"imgq-obs-{uuid.uuid4().hex[:8]}:",
        "IMGQ_LOG_FORMAT": "json", "IMGQ_MAX_IMAGE_BYTES": "200000",
        # no message is sent again while the test watches the queue drain: none counts as lost, and a chunk taken
        # while the new worker's pool process still loads TensorFlow is not taken back as dead
        "IMGQ_LOST_AFTER": "3600", "IMGQ_HEARTBEAT_TIMEOUT": "120"})
    stack.metrics = True
    stack.authenticate()
    stack.start_web()
    stack.start_maintenance()
    stack.wait_healthy()
    yield stack
    stack.stop()
    from shared.core.db import engine_for

    engine_for(url).dispose()
    drop_pg_database(url)


def scrape(url: str) -> dict:
    """{(sample name, ((label, value), ...)): value} of one scrape, parsed by prometheus-client."""
    text = requests.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def grown(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def poll(read, done, timeout: float = 180) -> list:
    """Readings of `read()` until `done(reading)`; all of them, the last one done."""
    readings, deadline = [], time.time() + timeout
    while True:
        try:
            readings.append(read())
        except requests.RequestException:
            pass  # the process is still starting
        if readings and done(readings[-1]):
            return readings
        if time.time() > deadline:
            raise TimeoutError(f"still not done after {timeout} s: {readings[-5:]}")
        time.sleep(0.2)


def score_depth(stack) -> float | None:
    samples = scrape(stack.metrics_url("maintenance"))
    return samples.get(("imgq_queue_depth", (("queue", "score"),)))


def json_lines(stack, name: str) -> list[dict]:
    """The JSON events of a process's log file (native libraries write a few plain lines of their own)."""
    out = []
    for line in (stack.log_dir / f"{name}.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def submit(stack, items, **headers) -> str:
    resp = stack.http.post(stack.url("/api/v1/jobs/score"), json={"model": MODEL, "items": items, "cache": False},
                           headers=headers, timeout=60)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def good_items(stack, folder: str, n: int, seed: int = 0) -> list[dict]:
    return [{"id": f"{folder}-{i}", "uri": str(write_jpeg(stack.data / folder / f"{i}.jpg", seed=seed + i)
                                                 .relative_to(stack.data))} for i in range(n)]


@pytest.fixture(scope="module")
def drained(stack, model_files):
    """A job submitted while no worker runs, then a worker started: the score queue's depth read all along."""
    import_model_http(stack, model_files["regression"], MODEL, target_transform="log1p")
    job_id = submit(stack, good_items(stack, "drain", 5 * CHUNK))
    waiting = poll(lambda: score_depth(stack), lambda depth: depth == 5)  # every chunk's message, none taken
    oldest_while_waiting = scrape(stack.metrics_url("maintenance"))
    stack.start_worker()
    draining = poll(lambda: score_depth(stack), lambda depth: depth == 0)
    assert stack.wait_job(job_id)["status"] == "succeeded"
    return [d for d in waiting[-1:] + draining if d is not None], oldest_while_waiting


def test_the_queue_depth_falls_as_a_job_drains(stack, drained):
    depths, while_waiting = drained
    assert depths[0] == 5 and depths[-1] == 0
    assert all(later <= earlier for earlier, later in zip(depths, depths[1:])), str(depths)
    oldest = ("imgq_queue_oldest_enqueued_timestamp_seconds", (("queue", "score"),))
    assert oldest in while_waiting and oldest not in scrape(stack.metrics_url("maintenance"))


def broken_items(stack) -> tuple[list[dict], dict]:
    """Items that fail, and how many fail for each reason class."""
    folder = stack.data / "broken"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.jpg").write_text("hello")
    (folder / "empty.jpg").write_bytes(b"")
    whole = write_jpeg(folder / "whole.jpg", size=(400, 300), seed=9)
    (folder / "trunc.jpg").write_bytes(whole.read_bytes()[:600])
    noise = np.random.default_rng(4).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")  # over IMGQ_MAX_IMAGE_BYTES
    items = [{"id": "text", "uri": "broken/text.jpg"}, {"id": "empty", "uri": "broken/empty.jpg"},
             {"id": "trunc", "uri": "broken/trunc.jpg"}, {"id": "noise", "uri": "broken/noise.png"},
             {"id": "missing", "uri": "broken/none.jpg"}, {"id": "escape", "uri": "../../etc/passwd"}]
    return items, {"not_an_image": 2, "truncated": 1, "too_large": 1, "not_found": 1, "outside_roots": 1}


@pytest.fixture(scope="module")
def counted(stack, drained):
    """A job of 30 good and 6 broken items on the running worker, with its metrics read before and after."""
    before = scrape(stack.metrics_url("worker"))
    broken, reasons = broken_items(stack)
    job = stack.wait_job(submit(stack, good_items(stack, "counted", 30, seed=100) + broken))
    return job, reasons, before, scrape(stack.metrics_url("worker"))


def test_a_workers_counters_grow_by_what_a_job_scored_and_why_the_rest_failed(counted):
    job, reasons, before, after = counted
    assert job["status"] == "succeeded" and (job["progress"]["succeeded"], job["progress"]["failed"]) == (30, 6)
    assert grown(before, after, "imgq_items_scored_total", kind="score", source="model") == 30
    assert grown(before, after, "imgq_items_scored_total", kind="score", source="cache") == 0
    failed = {dict(key[1])["reason"]: n - before.get(key, 0.0) for key, n in after.items()
              if key[0] == "imgq_items_failed_total" and dict(key[1])["kind"] == "score"}
    assert {reason: n for reason, n in failed.items() if n} == reasons
    assert grown(before, after, "imgq_chunks_claimed_total") == job["chunks"]["total"] == 3
    assert grown(before, after, "imgq_chunk_redeliveries_total") == 0
    assert grown(before, after, "imgq_batch_size_images_sum") == 30  # only decoded images reach the model
    assert grown(before, after, "imgq_batch_inference_seconds_count") >= 1
    assert grown(before, after, "imgq_decode_seconds_count") >= 30
    assert grown(before, after, "imgq_model_cache_requests_total", result="hit") >= 1  # loaded for the first job
    assert value(after, "imgq_model_load_seconds_count") >= 1


def test_a_chunks_json_lines_carry_its_job_and_chunk(stack, counted):
    job = counted[0]
    lines = json_lines(stack, "worker")
    assert lines and all({"timestamp", "level", "logger", "role", "message"} <= set(line) for line in lines)
    mine = [line for line in lines if line.get("job_id") == job["id"]]
    claimed = [line for line in mine if line["logger"] == "worker.run_chunk" and "claimed" in line["message"]]
    assert {line["chunk_id"] for line in claimed} == {0, 1, 2}
    first = next(line for line in claimed if line["chunk_id"] == 0)
    assert (first["role"], first["attempt"], first["level"]) == ("worker", 1, "INFO")
    assert any(line["logger"] == "celery.app.trace" and "succeeded" in line["message"] for line in mine)


VECTOR = re.compile(r"-?\d+\.\d+, -?\d+\.\d+")  # two numbers in a row: a vector's values, in any repr


@pytest.fixture(scope="module")
def queried(stack, drained, tmp_path_factory):
    """A catalog embedded and indexed, then one image query with a request id of the client's; the worker's metrics
    read around the query."""
    file = tmp_path_factory.mktemp("embedder") / "embedder.keras"
    tiny_cnn(32, 6).save(file)
    import_model_http(stack, file, "observed-embedder", task="embedding")
    items = good_items(stack, "photos", 6, seed=200)
    pd.DataFrame({"id": [i["id"] for i in items], "image": [i["uri"].split("/")[-1] for i in items]}).to_csv(
        stack.data / "photos" / "items.csv", index=False)
    resp = stack.http.post(stack.url("/api/v1/jobs/embed"), json={
        "model": "observed-embedder", "catalog": "observed", "manifest": "photos/items.csv"}, timeout=60)
    assert stack.wait_job(resp.json()["id"])["status"] == "succeeded"
    resp = stack.http.post(stack.url("/api/v1/catalogs/observed/indexes"), json={}, timeout=60)
    assert stack.wait_job(resp.json()["id"])["status"] == "succeeded"
    before = scrape(stack.metrics_url("worker"))
    resp = stack.http.post(stack.url("/api/v1/similar"), json={"catalog": "observed", "k": 3,
                                                                "image_uri": items[2]["uri"]},
                           headers={"X-Request-ID": "obs-query-1"}, timeout=60)
    return resp, items[2]["id"], before, scrape(stack.metrics_url("worker"))


def test_a_query_is_answered_and_its_vector_reaches_no_log_line(stack, queried):
    resp, expected_first, before, after = queried
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Request-ID"] == "obs-query-1"
    assert resp.json()["results"][0]["id"] == expected_first
    assert grown(before, after, "imgq_query_images_total") == 1
    assert grown(before, after, "imgq_query_embed_seconds_count") == 1
    assert value(scrape(stack.metrics_url("maintenance")), "imgq_index_build_seconds_count", outcome="built") == 1
    answered = [line for line in json_lines(stack, "worker")
                if line["logger"] == "celery.app.trace" and "imgq.embed_query" in line["message"]]
    assert answered and answered[-1]["request_id"] == "obs-query-1"  # the web request's id, through the message
    for name in ("web", "worker", "maintenance"):
        text = (stack.log_dir / f"{name}.log").read_text(errors="replace")
        assert not VECTOR.search(text), (name, VECTOR.search(text))
        assert "'vectors': [" not in text


def test_web_access_lines_name_route_status_and_duration_never_the_token(stack, counted, queried):
    text = (stack.log_dir / "web.log").read_text(errors="replace")
    assert stack.token and stack.token not in text and "Bearer" not in text
    access = [line for line in json_lines(stack, "web") if line["logger"] == "web.access_log"]
    query = [line for line in access if line.get("request_id") == "obs-query-1"]
    assert len(query) == 1
    assert {k: query[0][k] for k in ("method", "route", "status", "role", "level")} == {
        "method": "POST", "route": "catalogs.similar_one", "status": 200, "role": "web", "level": "INFO"}
    assert isinstance(query[0]["duration_ms"], float)
    submitted = [line for line in access if line["route"] == "jobs.create_score_job"]
    assert len(submitted) >= 2 and all(line["status"] == 202 for line in submitted)
    assert all(re.fullmatch(r"[0-9a-f]{32}", line["request_id"]) for line in submitted)  # made when none was sent
    samples = scrape(stack.url("/metrics"))
    assert value(samples, "imgq_http_request_duration_seconds_count", route="jobs.create_score_job", method="POST",
                 status="202") == len(submitted)


def test_a_trainings_epochs_reach_its_workers_metrics_and_its_lines_carry_the_job(stack, drained):
    folder = stack.data / "train"
    rows = [{"id": f"t{i}", "image": write_jpeg(folder / f"{i}.jpg", seed=300 + i).name, "label": "ab"[i % 2]}
            for i in range(60)]
    pd.DataFrame(rows).to_csv(folder / "items.csv", index=False)
    before = scrape(stack.metrics_url("worker"))
    resp = stack.http.post(stack.url("/api/v1/jobs/train"), timeout=30, json={
        "model": "observed-trained", "task": "classification", "input_size": 32, "epochs": 2, "batch_size": 16,
        "dataset": {"path": "train/items.csv", "id_column": "id", "label_column": "label"},
        "base": {"architecture": "vgg", "width": 8}})
    assert resp.status_code == 202, resp.text
    job = stack.wait_job(resp.json()["id"], timeout=600, poll=1.0)
    assert job["status"] == "succeeded", job
    after = scrape(stack.metrics_url("worker"))  # written by the training subprocess, served by its worker
    assert grown(before, after, "imgq_train_epoch_seconds_count") == 2
    assert value(after, "imgq_train_last_epoch", model="observed-trained") == 2
    assert {"loss", "val_loss"} <= {dict(labels)["metric"] for name, labels in after
                                   if name == "imgq_train_last_epoch_metric"
                                   and dict(labels)["model"] == "observed-trained"}
    trainer = [json.loads(line) for line in (stack.log_dir.parent / "home" / "train-logs" / f"{job['id']}.log")
               .read_text().splitlines() if line.startswith("{")]
    assert trainer and all((line["role"], line["job_id"], line["attempt"]) == ("trainer", job["id"], 1)
                           for line in trainer)
