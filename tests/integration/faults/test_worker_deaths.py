"""Worker deaths and stuck items, injected for real: kill -9 of whole workers and of pool processes, a read
that blocks (a FIFO stands in for a stuck network mount), an item that kills every worker scoring it.

Each test proves the promise on the database with the checker: the job ends once, every item has one
result or one clear error, good items score as a fault-free run does.
"""
from __future__ import annotations

import os
import re
import time

import pytest
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import Chunk, JobItem
from tests.integration.faults.checker import score_job_check
from tests.integration.faults.stack import (
    FaultStack,
    expected_pageviews,
    items_for,
    progress,
    register_model,
    submit_items,
    wait_until,
    write_photos,
)

pytestmark = [pytest.mark.faults]


@pytest.fixture
def stack_factory(tmp_path, fault_db, fault_broker):
    stacks = []

    def make(**env) -> FaultStack:
        stack = FaultStack(tmp_path / f"stack{len(stacks)}", fault_db, fault_broker, **env)
        stacks.append(stack)
        return stack.start()

    yield make
    for stack in stacks:
        stack.stop()


def chunk_rows(url, job_id):
    with session_scope(url) as s:
        return {c.chunk_no: (c.state, c.attempts, c.worker, c.suspect_item, c.started_at)
                for c in s.scalars(select(Chunk).where(Chunk.job_id == job_id))}


def wait_new_pool_child(stack, name, old: set, timeout=60):
    return wait_until(lambda: set(stack.pool_children(name)) - old, timeout, f"a new pool process of {name}")


def heavy_model(path, seed):
    """A model whose file is about 200 MB (a 50-million-weight dense layer), as a production CNN's is:
    loading it (checksum, deserialise) takes seconds."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Dense(1, activation="relu")(keras.layers.Dense(16384)(keras.layers.Flatten()(inputs)))
    keras.Model(inputs, x).save(path)
    return path


def test_a_replaced_pool_process_loads_the_production_models_and_scores_again(stack_factory, model_files,
                                                                             fault_report, tmp_path):
    stack = stack_factory()
    model = register_model(stack, model_files["regression"])
    for k in range(2):  # two more production models: a new pool process preloads all three
        register_model(stack, heavy_model(tmp_path / f"heavy{k}.keras", seed=k))
    paths = write_photos(stack.data / "first", 20, seed=1)
    assert stack.wait_job(submit_items(stack, model, items_for(paths, stack.data)))["status"] == "succeeded"
    old = set(stack.pool_children("w1"))
    killed_at = time.time()
    stack.kill_pool_child("w1")
    wait_new_pool_child(stack, "w1", old)
    preload = wait_until(lambda: re.findall(r"preloaded 3 production models in ([0-9.]+) s", stack.log_text("w1")),
                         240, "the new pool process to preload the production models")
    seconds = float(preload[-1])  # a figure for the report, not a pass/fail: it swings with the machine's load
    paths = write_photos(stack.data / "second", 40, seed=2)
    job_id = submit_items(stack, model, items_for(paths, stack.data))
    job = stack.wait_job(job_id, timeout=240)
    recovered = time.time() - killed_at
    check = score_job_check(stack.database_url, job_id, expected_pageviews(model_files["regression"], paths))
    assert job["status"] == "succeeded" and check.ok, check.violations
    assert "Timed out waiting for UP message" not in stack.log_text("w1")
    fault_report.record(fault="kill -9 of the pool process (3 production models to preload)", case="score",
                        recover_seconds=recovered, items=check.items, lost=check.lost, duplicated=check.duplicated,
                        verdict="pass", notes=f"the new pool process took {seconds:.1f} s to preload (Celery's "
                                              "default limit, 4 s, would kill a slower one; imgq's is "
                                              "IMGQ_WORKER_START_TIMEOUT) and scored the next job")


def test_a_3000_item_job_survives_three_kill_9s_of_workers_and_pool_processes(stack_factory, model_files,
                                                                             fault_report):
    stack = stack_factory(IMGQ_CHUNK_SIZE="64")
    stack.worker_names.append("w2")
    stack.start_worker("w2")
    model = register_model(stack, model_files["regression"])
    paths = write_photos(stack.data / "big", 3000, seed=3)
    expected = expected_pageviews(model_files["regression"], paths)
    job_id = submit_items(stack, model, items_for(paths, stack.data))
    faults = []
    for at, fault in ((300, "pool:w1"), (1200, "worker:w1"), (2100, "pool:w2")):
        wait_until(lambda at=at: progress(stack, job_id)["done"] >= at, 600, f"{at} items done")
        kind, name = fault.split(":")
        if kind == "pool":
            assert stack.kill_pool_child(name) is not None
        else:
            stack.kill_worker(name)
            time.sleep(1)
            stack.start_worker(name)
        faults.append((time.time(), fault))
    job = stack.wait_job(job_id, timeout=900)
    check = score_job_check(stack.database_url, job_id, expected)
    assert job["status"] == "succeeded" and check.ok, check.violations
    assert check.results == 3000 and check.lost == check.duplicated == 0
    restarted = f"cpu-{stack.workers['w1'].pid}@"
    rows = chunk_rows(stack.database_url, job_id)
    assert max(attempts for _, attempts, _, _, _ in rows.values()) >= 2  # some chunk did die and retry
    # the restarted worker came back whole: a pool process that preloaded the models. Whether it got a chunk of
    # this job is a race with w2, which may finish the job while w1 starts (TensorFlow's import, under load)
    children = wait_until(lambda: stack.pool_children("w1"), 240, "a pool process of the restarted w1")
    wait_until(lambda: any(f"pool process {pid} preloaded" in stack.log_text("w1") for pid in children), 240,
               "the restarted w1's pool process to preload the production models")
    scored_by_restarted = sum(bool(worker and worker.startswith(restarted)) for _, _, worker, _, _ in rows.values())
    fault_report.record(fault="kill -9: pool process of w1, whole w1 (restarted), pool process of w2",
                        case="score, 3,000 items, 2 workers", recover_seconds=None, items=check.items,
                        lost=check.lost, duplicated=check.duplicated, verdict="pass",
                        notes=f"finished {time.time() - faults[-1][0]:.0f} s after the last kill; the restarted "
                              f"w1 scored {scored_by_restarted} of {len(rows)} chunks")


def make_fifo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def test_a_hanging_read_becomes_that_items_error_without_holding_its_chunk_or_maintenance(
        stack_factory, model_files, fault_report):
    # The read blocks longer than the heartbeat timeout: the heartbeat thread keeps the chunk its own.
    stack = stack_factory(IMGQ_READ_TIMEOUT="15", IMGQ_HEARTBEAT_TIMEOUT="6")
    stack.worker_names.append("w2")
    stack.start_worker("w2")
    model = register_model(stack, model_files["regression"])
    paths = write_photos(stack.data / "hang", 40, seed=4)
    fifo = make_fifo(stack.data / "hang" / "p00013-stuck.jpg")
    items = items_for(paths, stack.data) + [{"id": "stuck", "uri": "hang/p00013-stuck.jpg"}]
    job_id = submit_items(stack, model, items)
    wait_until(lambda: any(state == "running" and time.time() - started.timestamp() > 3
                           for state, _, _, _, started in chunk_rows(stack.database_url, job_id).values()),
               120, "the chunk holding the stuck item to hang")
    swept_before = stack.http.get(stack.url("/readyz"), timeout=10).json()["sweeper_age_seconds"]
    time.sleep(8)  # while the read hangs, maintenance must go on
    ready = stack.http.get(stack.url("/readyz"), timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["sweeper_age_seconds"] < 6 and swept_before is not None
    job = stack.wait_job(job_id, timeout=180)
    expected = {**expected_pageviews(model_files["regression"], paths), "stuck": None}
    check = score_job_check(stack.database_url, job_id, expected)
    assert job["status"] == "succeeded" and check.ok, check.violations
    error = stack.http.get(stack.url(f"/api/v1/jobs/{job_id}/results"), params={"limit": 100}, timeout=10).json()
    stuck = next(r for r in error["results"] if r["id"] == "stuck")
    assert "timed out after 15 s" in stuck["error"]
    attempts = [a for _, a, _, _, _ in chunk_rows(stack.database_url, job_id).values()]
    assert attempts == [1] * len(attempts), "a live chunk was taken for dead and scored twice"
    assert fifo.exists()
    fault_report.record(fault="an item whose read blocks (FIFO) longer than the heartbeat timeout", case="score",
                        recover_seconds=15.0, items=check.items, lost=check.lost, duplicated=check.duplicated,
                        verdict="pass", notes="that item failed with a timeout; no chunk retried; sweeps went on")


def test_an_item_that_kills_every_worker_scoring_it_fails_alone(stack_factory, model_files, fault_report):
    """The item's read hangs (FIFO, long read timeout) and the test kills the pool process each time it does:
    three ordinary attempts die, then the chunk's items are scored one by one and only it is failed."""
    stack = stack_factory(IMGQ_READ_TIMEOUT="600", IMGQ_HEARTBEAT_TIMEOUT="5")
    model = register_model(stack, model_files["regression"])
    paths = write_photos(stack.data / "poison", 15, seed=5)
    make_fifo(stack.data / "poison" / "p00007-poison.jpg")
    items = items_for(paths, stack.data) + [{"id": "p00007-poison", "uri": "poison/p00007-poison.jpg"}]
    job_id = submit_items(stack, model, items)
    with session_scope(stack.database_url) as s:
        assert s.scalar(select(func.count(func.distinct(JobItem.chunk_no))).where(JobItem.job_id == job_id)) == 1
    kills, killed_attempt, started = 0, 0, time.time()
    while stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["status"] == "running" \
            or kills == 0:
        state, attempts, _, suspect, begun = chunk_rows(stack.database_url, job_id)[0]
        hung = state == "running" and attempts > killed_attempt and \
            (suspect == "p00007-poison" if attempts > 3 else time.time() - begun.timestamp() > 3)
        if hung:
            killed_attempt = attempts
            old = set(stack.pool_children("w1"))
            stack.kill_pool_child("w1")
            kills += 1
            wait_new_pool_child(stack, "w1", old)
        assert time.time() - started < 600 and kills <= 6, f"{kills} kills: {chunk_rows(stack.database_url, job_id)}"
        time.sleep(0.3)
    job = stack.wait_job(job_id, timeout=120)
    expected = {**expected_pageviews(model_files["regression"], paths), "p00007-poison": None}
    check = score_job_check(stack.database_url, job_id, expected)
    assert job["status"] == "succeeded" and check.ok, check.violations
    assert job["progress"]["failed"] == 1 and kills == 5  # 3 ordinary attempts + 2 deaths on the item alone
    results = stack.http.get(stack.url(f"/api/v1/jobs/{job_id}/results"), params={"limit": 100}, timeout=10).json()
    poison = next(r for r in results["results"] if r["id"] == "p00007-poison")
    assert "died 2 times while scoring this item alone" in poison["error"]
    fault_report.record(fault="an item that kills its worker (5 kill -9s of the pool process)", case="score",
                        recover_seconds=None, items=check.items, lost=check.lost, duplicated=check.duplicated,
                        verdict="pass", notes="only the poison item failed; its 15 chunk-mates scored")
