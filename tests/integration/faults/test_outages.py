"""Outages of the database and of the broker in the middle of a job: an accepted job still finishes, every item
gets exactly one result (or one clear error), and recovery takes a bounded time.

Each test starts a FaultStack (web front, two workers, maintenance process with beat) on the suite's private
servers, waits until the job has really started (items done, or an epoch finished), injects one fault, lets the
job finish, checks the database with the checker and records what it measured in the reliability report.

Bounds the README documents, with FAULT_ENV's short timeouts: a message the broker lost is sent again within
IMGQ_LOST_AFTER + IMGQ_SWEEP_INTERVAL after the broker is back; a dead attempt is taken back within
IMGQ_HEARTBEAT_TIMEOUT + IMGQ_SWEEP_INTERVAL. The machine is shared and small, so the tests assert generous
multiples of these (SLACK) and record the figures they measured.
"""
from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
import requests
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import Chunk, Job, ModelVersion, Result, TrainMetric, TrainRun
from tests.integration.faults.checker import check_train_job, score_job_check
from tests.integration.faults.stack import (
    FAULT_ENV,
    FaultStack,
    expected_pageviews,
    items_for,
    register_model,
    submit_items,
    wait_until,
    write_digits,
    write_photos,
)

pytestmark = [pytest.mark.faults]

LOST_AFTER = float(FAULT_ENV["IMGQ_LOST_AFTER"])
SWEEP_INTERVAL = float(FAULT_ENV["IMGQ_SWEEP_INTERVAL"])
HEARTBEAT_TIMEOUT = float(FAULT_ENV["IMGQ_HEARTBEAT_TIMEOUT"])
LOST_MESSAGE_BOUND = LOST_AFTER + SWEEP_INTERVAL  # documented: a lost message is sent again within this
DEAD_ATTEMPT_BOUND = HEARTBEAT_TIMEOUT + SWEEP_INTERVAL  # documented: a dead attempt is taken back within this
SLACK = 5  # 2 shared cores: assert this multiple of a documented bound (measured figures go to the report)

PG_OUTAGE_SECONDS = 15.0
STARTUP_TIMEOUT = 240.0

SCORE_ITEMS = 400
PHOTO_SIZE = (1024, 768)  # photo-sized decodes, so the job lasts long enough to be hit mid-way
SCORE_ENV = {"IMGQ_CHUNK_SIZE": "8", "IMGQ_BATCH_SIZE": "4"}  # many chunks: many messages in flight
SCORE_FINISH_AFTER_PG = 120.0  # far below IMGQ_REQUEUE_AFTER (3600 s): messages taken in the outage came back
SCORE_FINISH_AFTER_REDIS = 90.0

TRAIN_EPOCHS = 6
TRAIN_FIRST_EPOCH_AFTER = 240.0  # a new training process: TensorFlow import, data load, one epoch, on 2 cores
TRAIN_FINISH_AFTER = 600.0


# ---------------------------------------------------------------- stacks and jobs

@pytest.fixture
def start_stack(tmp_path, fault_db, fault_broker):
    """Start a FaultStack with two workers (and extra environment); stopped after the test."""
    stacks: list[FaultStack] = []

    def start(**env) -> FaultStack:
        stack = FaultStack(tmp_path, fault_db, fault_broker, workers=2, **env)
        stacks.append(stack)
        return stack.start(timeout=STARTUP_TIMEOUT)

    yield start
    for stack in stacks:
        stack.stop()


@dataclass
class ScoreCase:
    model: str
    job_id: str
    items: list[dict]
    expected: dict[str, dict]


def start_score_job(stack: FaultStack, model_file) -> ScoreCase:
    """Register the model, write photos, compute the fault-free outputs, then submit the job."""
    model = register_model(stack, model_file)
    paths = write_photos(stack.data / "photos", SCORE_ITEMS, size=PHOTO_SIZE)
    expected = expected_pageviews(model_file, paths)  # before submitting: no CPU taken from the job
    items = items_for(paths, stack.data)
    return ScoreCase(model, submit_items(stack, model, items), items, expected)


def job_body(stack: FaultStack, job_id: str) -> dict | None:
    resp = stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=10)
    return resp.json() if resp.status_code == 200 else None


def wait_score_mid_job(stack: FaultStack, job_id: str, min_done: int = 16) -> dict:
    """The job's progress once `min_done` items are done; fails if the job ended before (no mid-job fault)."""
    def started():
        body = job_body(stack, job_id)
        if body is None:
            return None
        assert body["status"] in ("queued", "running"), f"job {job_id} ended before the fault: {body}"
        return body["progress"] if body["progress"]["done"] >= min_done else None

    progress = wait_until(started, 180, f"job {job_id} doing {min_done} items")
    assert progress["remaining"] >= SCORE_ITEMS // 4, f"too little left for a mid-job fault: {progress}"
    return progress


def train_request(name: str) -> dict:
    """A small, fast classification from scratch on the digits: tens of seconds, epochs of a few seconds."""
    return {"model": name, "task": "classification",
            "dataset": {"path": "digits/all.csv", "image_column": "image", "id_column": "id",
                        "label_column": "label"},
            "base": {"architecture": "vgg", "width": 16}, "input_size": 32, "epochs": TRAIN_EPOCHS,
            "batch_size": 32, "optimizer": {"name": "adam", "learning_rate": 0.002}}


def start_train_job(stack: FaultStack) -> str:
    write_digits(stack.data / "digits")
    resp = stack.http.post(stack.url("/api/v1/jobs/train"), json=train_request(f"digits-{uuid.uuid4().hex[:6]}"),
                         timeout=120)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def wait_train_after_first_epoch(stack: FaultStack, job_id: str) -> dict:
    """The progress once epoch 1 is checkpointed; fails if training ended first."""
    def checkpointed():
        body = job_body(stack, job_id)
        if body is None:
            return None
        assert body["status"] in ("queued", "running"), f"train job {job_id} ended before the fault: {body}"
        return body["progress"] if body["progress"]["checkpoint_epoch"] >= 1 else None

    progress = wait_until(checkpointed, 400, f"train job {job_id} finishing epoch 1", poll=0.3)
    assert progress["epoch"] < TRAIN_EPOCHS - 1, f"too little training left for a mid-job fault: {progress}"
    return progress


def wait_finished(stack: FaultStack, job_id: str, timeout: float) -> dict | None:
    try:
        return stack.wait_job(job_id, timeout=timeout)
    except TimeoutError:
        return None


# ---------------------------------------------------------------- what the database says happened

def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def seconds_after(moment: datetime | None, t: float) -> float | None:
    return None if moment is None else (moment - at(t)).total_seconds()


def first_result_after(url: str, job_id: str, t: float) -> float | None:
    """Seconds from `t` to the first result row written after it: progress moving again."""
    with session_scope(url) as session:
        first = session.scalar(select(func.min(Result.created_at)).where(Result.job_id == job_id,
                                                                         Result.created_at >= at(t)))
    return seconds_after(first, t)


def first_epoch_after(url: str, job_id: str, t: float) -> float | None:
    with session_scope(url) as session:
        first = session.scalar(select(func.min(TrainMetric.created_at)).where(TrainMetric.job_id == job_id,
                                                                              TrainMetric.created_at >= at(t)))
    return seconds_after(first, t)


def results_before(url: str, job_id: str, t: float) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id,
                                                                             Result.created_at < at(t)))


def finished_after(url: str, job_id: str, t: float) -> float | None:
    with session_scope(url) as session:
        return seconds_after(session.scalar(select(Job.finished_at).where(Job.id == job_id)), t)


def queued_chunks(url: str, job_id: str) -> set[int]:
    with session_scope(url) as session:
        return set(session.scalars(select(Chunk.chunk_no).where(Chunk.job_id == job_id, Chunk.state == "queued")))


def chunk_attempts(url: str, job_id: str) -> dict[int, int]:
    with session_scope(url) as session:
        return dict(session.execute(select(Chunk.chunk_no, Chunk.attempts).where(Chunk.job_id == job_id)).all())


def resend_delays(url: str, job_id: str, chunk_nos: set[int], t: float) -> list[float]:
    """For each chunk sent again after `t`, how long after `t` it was last sent."""
    with session_scope(url) as session:
        sent = session.scalars(select(Chunk.enqueued_at).where(Chunk.job_id == job_id,
                                                               Chunk.chunk_no.in_(chunk_nos)))
        return sorted((s - at(t)).total_seconds() for s in sent if s is not None and s >= at(t))


def train_run(url: str, job_id: str) -> dict:
    with session_scope(url) as session:
        run = session.get(TrainRun, job_id)
        return {"attempts": run.attempts, "resumed_from_epoch": run.resumed_from_epoch, "epoch": run.epoch,
                "epochs": run.epochs_total}


def version_problems(url: str, job_id: str) -> list[str]:
    """The job registered one version of its model, and the holdout metrics it reports are that version's (a
    second, concurrent attempt must not register the model while another reports the metrics)."""
    with session_scope(url) as session:
        run = session.get(TrainRun, job_id)
        versions = list(session.scalars(select(ModelVersion).where(ModelVersion.name == run.model_name)))
        mine = [v for v in versions if (v.lineage or {}).get("job_id") == job_id]
        if len(mine) != 1:
            return [f"train job {job_id} registered {len(mine)} versions of {run.model_name}, not one"]
        lineage_metrics = (mine[0].lineage or {}).get("holdout_metrics")
        if mine[0].id != run.result_version_id or lineage_metrics != run.holdout_metrics:
            return [(f"train job {job_id} reports holdout {run.holdout_metrics} for version id "
                     f"{run.result_version_id}, but the version it registered (id {mine[0].id}) was measured at "
                     f"{lineage_metrics}: another attempt registered it")]
    return []


def epoch_numbers(url: str, job_id: str) -> list[int]:
    with session_scope(url) as session:
        return list(session.scalars(select(TrainMetric.epoch).where(TrainMetric.job_id == job_id)
                                    .order_by(TrainMetric.epoch)))


def count_in_logs(stack: FaultStack, pattern: str, *names: str) -> int:
    return sum(len(re.findall(pattern, stack.log_text(name))) for name in names)


def fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


# ---------------------------------------------------------------- the outage itself

def json_503_problem(resp: requests.Response, what: str) -> str | None:
    """None for a clear, retryable answer (503 with a JSON error body), else what is wrong with it."""
    if resp.status_code != 503:
        return f"{what} during the database outage answered {resp.status_code}: {resp.text[:300]}"
    if not resp.headers.get("Content-Type", "").startswith("application/json"):
        return f"{what} answered 503 but not JSON ({resp.headers.get('Content-Type')}): {resp.text[:300]}"
    error = resp.json().get("error")
    if not (isinstance(error, dict) and error.get("message")):
        return f"{what} answered 503 without an error message: {resp.text[:300]}"
    return None


def postgres_outage(private_pg, stack: FaultStack, job_id: str,
                    score_body: dict | None = None) -> tuple[float, float, list[str]]:
    """Stop PostgreSQL (fast: clients are cut off) for PG_OUTAGE_SECONDS, asking the web front meanwhile, and
    start it again. Returns (stopped at, back at) as time.time(), and what was wrong with the web's answers."""
    private_pg.stop(mode="fast")
    down_at = time.time()
    try:
        answers = [json_503_problem(stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=30),
                                    "GET /api/v1/jobs/<id>")]
        if score_body is not None:
            answers.append(json_503_problem(stack.http.post(stack.url("/api/v1/jobs/score"), json=score_body,
                                                          timeout=30), "POST /api/v1/jobs/score"))
        time.sleep(max(0.0, down_at + PG_OUTAGE_SECONDS - time.time()))
    finally:
        private_pg.start()
    return down_at, time.time(), [a for a in answers if a]


def record(fault_report, *, fault: str, case: str, recovered: float | None, items: int, lost: int,
           duplicated: int, problems: list[str], notes: str) -> None:
    fault_report.record(fault=fault, case=case, recover_seconds=recovered, items=items, lost=lost,
                        duplicated=duplicated, verdict="fail" if problems else "pass",
                        notes=notes + ("; FAILED: " + " | ".join(problems)[:600] if problems else ""))


def bound_problems(measures: list[tuple[str, float | None, float]]) -> list[str]:
    """A sentence for each measured delay that is missing or over its bound."""
    return [f"{what} {fmt(value)}, bound {bound:.0f} s" for what, value, bound in measures
            if value is None or value > bound]


# ---------------------------------------------------------------- score jobs

def test_a_score_job_finishes_through_a_postgres_outage_without_loss(start_stack, private_pg, model_files,
                                                                     fault_report):
    stack = start_stack(**SCORE_ENV)
    case = start_score_job(stack, model_files["regression"])
    wait_score_mid_job(stack, case.job_id)
    probe = {"model": case.model, "items": case.items[:3], "cache": False}
    down_at, back_at, web_problems = postgres_outage(private_pg, stack, case.job_id, score_body=probe)

    done = wait_finished(stack, case.job_id, SCORE_FINISH_AFTER_PG + 120)
    url = stack.database_url
    check = score_job_check(url, case.job_id, case.expected)
    moving = first_result_after(url, case.job_id, back_at)
    finished = finished_after(url, case.job_id, back_at)
    attempts = chunk_attempts(url, case.job_id)
    requeued = count_in_logs(stack, r"database unavailable \(", "w1", "w2")
    at_stop = results_before(url, case.job_id, down_at)
    problems = web_problems + check.violations[:5] + bound_problems([
        ("progress moved again after", moving, SLACK * DEAD_ATTEMPT_BOUND),
        ("job finished after", finished, SCORE_FINISH_AFTER_PG)])
    if at_stop >= check.items:
        problems.append("the job was done before the database stopped: the fault did not land mid-job")
    if done is None:
        problems.insert(0, f"job not finished {SCORE_FINISH_AFTER_PG + 120:.0f} s after the outage")
    record(fault_report, fault=f"PostgreSQL stopped {PG_OUTAGE_SECONDS:.0f} s mid-job", case="score",
           recovered=moving, items=check.items, lost=check.lost, duplicated=check.duplicated, problems=problems,
           notes=(f"stopped at {at_stop}/{check.items} done, for {back_at - down_at:.1f} s; GET job and POST score "
                  f"{'answered 503 JSON' if not web_problems else 'did NOT answer 503 JSON'} during the outage; "
                  f"results again {fmt(moving)} after the server was back, job finished after {fmt(finished)} "
                  f"(bounds {SLACK * DEAD_ATTEMPT_BOUND:.0f} s, {SCORE_FINISH_AFTER_PG:.0f} s); "
                  f"{requeued} messages requeued in the outage; max chunk attempts {max(attempts.values())}"))
    assert not problems, "\n".join(problems) + f"\nlogs in {stack.log_dir}"
    assert done["status"] == "succeeded", done


def test_a_score_job_finishes_after_redis_restarts_empty_without_loss(start_stack, private_redis, model_files,
                                                                      fault_report):
    # One chunk per task: with chaining on, the running task claims the job's queued chunks from the database and
    # the job finishes whatever Redis lost; this test proves the sweeper sends lost messages again, which is what
    # saves a job whose workers were all idle when Redis lost its queue.
    stack = start_stack(**SCORE_ENV, IMGQ_CHAIN_SECONDS="0")
    case = start_score_job(stack, model_files["regression"])
    wait_score_mid_job(stack, case.job_id)
    url = stack.database_url
    resends_before = count_in_logs(stack, r"sending them again", "maintenance")
    lost = queued_chunks(url, case.job_id)  # their messages wait in Redis: the restart loses them all
    down_at = time.time()
    private_redis.restart()
    back_at = time.time()

    done = wait_finished(stack, case.job_id, SCORE_FINISH_AFTER_REDIS + 120)
    check = score_job_check(url, case.job_id, case.expected)
    # counted from the kill: the sweeper may send them again before restart() has returned
    delays = resend_delays(url, case.job_id, lost, down_at)
    resent = max(0.0, delays[-1] - (back_at - down_at)) if delays else None
    finished = finished_after(url, case.job_id, back_at)
    at_restart = results_before(url, case.job_id, back_at)
    problems = check.violations[:5] + bound_problems([
        ("lost chunks sent again after", resent, SLACK * LOST_MESSAGE_BOUND),
        ("job finished after", finished, SCORE_FINISH_AFTER_REDIS)])
    if not lost:
        problems.append("no chunk was waiting in the queue at the restart: nothing was lost, nothing tested")
    if len(delays) < len(lost) // 2:
        problems.append(f"only {len(delays)} of the {len(lost)} lost chunks were sent again")
    if done is None:
        problems.insert(0, f"job not finished {SCORE_FINISH_AFTER_REDIS + 120:.0f} s after Redis was back")
    record(fault_report, fault="Redis killed and restarted empty mid-job", case="score", recovered=resent,
           items=check.items, lost=check.lost, duplicated=check.duplicated, problems=problems,
           notes=(f"restarted at {at_restart}/{check.items} done with {len(lost)} chunks' messages queued; "
                  f"{len(delays)} sent again by the sweeper, the last {fmt(resent)} after Redis was back "
                  f"(documented {LOST_MESSAGE_BOUND:.0f} s + reconnect, bound {SLACK * LOST_MESSAGE_BOUND:.0f} s); "
                  f"job finished after {fmt(finished)} (bound {SCORE_FINISH_AFTER_REDIS:.0f} s); "
                  f"{resends_before} resends by the sweeper before the fault"))
    assert not problems, "\n".join(problems) + f"\nlogs in {stack.log_dir}"
    assert done["status"] == "succeeded", done


# ---------------------------------------------------------------- train jobs

def check_train_case(fault_report, stack: FaultStack, job_id: str, *, fault: str, back_at: float,
                     at_fault: dict, done: dict | None, extra_notes: str = "",
                     problems_seen: tuple[str, ...] = ()) -> list[str]:
    """Check the train job, record its row (items are epochs) and return what is wrong."""
    url = stack.database_url
    violations = check_train_job(url, job_id)
    run = train_run(url, job_id)
    epochs = epoch_numbers(url, job_id)
    moving = first_epoch_after(url, job_id, back_at)
    finished = finished_after(url, job_id, back_at)
    problems = [*problems_seen, *violations[:5]] + bound_problems([
        ("an epoch ended again after", moving, TRAIN_FIRST_EPOCH_AFTER),
        ("job finished after", finished, TRAIN_FINISH_AFTER)])
    if done is None:
        problems.insert(0, f"train job not finished {TRAIN_FINISH_AFTER:.0f} s after the fault")
    elif done["status"] != "succeeded":
        problems.insert(0, f"train job {done['status']}: {(done.get('error') or '')[-300:]}")
    else:
        problems += version_problems(url, job_id)
    if run["attempts"] > 1 and not run["resumed_from_epoch"]:
        problems.append(f"attempt {run['attempts']} trained from scratch instead of resuming from its checkpoint")
    if epochs != list(range(1, TRAIN_EPOCHS + 1)):
        problems.append(f"epoch metrics {epochs}, expected 1..{TRAIN_EPOCHS} once each")
    missing = len(set(range(1, TRAIN_EPOCHS + 1)) - set(epochs))
    record(fault_report, fault=fault, case="train", recovered=moving, items=TRAIN_EPOCHS, lost=missing,
           duplicated=0, problems=problems,
           notes=(f"items are epochs; fault after epoch {at_fault['checkpoint_epoch']} of {TRAIN_EPOCHS}; "
                  f"an epoch ended again {fmt(moving)} after the server was back, job finished after "
                  f"{fmt(finished)} (bounds {TRAIN_FIRST_EPOCH_AFTER:.0f} s, {TRAIN_FINISH_AFTER:.0f} s); "
                  f"{run['attempts']} attempts, resumed from epoch {run['resumed_from_epoch']}" + extra_notes))
    return problems


def test_a_train_job_resumes_from_its_checkpoint_and_succeeds_through_a_postgres_outage(
        start_stack, private_pg, fault_report):
    stack = start_stack()
    job_id = start_train_job(stack)
    at_fault = wait_train_after_first_epoch(stack, job_id)
    down_at, back_at, web_problems = postgres_outage(private_pg, stack, job_id)

    done = wait_finished(stack, job_id, TRAIN_FINISH_AFTER + 60)
    requeued = count_in_logs(stack, r"database unavailable \(", "w1", "w2")
    problems = check_train_case(fault_report, stack, job_id, back_at=back_at, at_fault=at_fault, done=done,
                                fault=f"PostgreSQL stopped {PG_OUTAGE_SECONDS:.0f} s mid-job",
                                problems_seen=tuple(web_problems),
                                extra_notes=f"; outage {back_at - down_at:.1f} s; {requeued} messages requeued in it")
    assert not problems, "\n".join(problems) + f"\nlogs in {stack.log_dir}"


def test_a_train_job_succeeds_after_redis_restarts_empty(start_stack, private_redis, fault_report):
    stack = start_stack()
    job_id = start_train_job(stack)
    at_fault = wait_train_after_first_epoch(stack, job_id)
    private_redis.restart()
    back_at = time.time()

    done = wait_finished(stack, job_id, TRAIN_FINISH_AFTER + 60)
    problems = check_train_case(fault_report, stack, job_id, back_at=back_at, at_fault=at_fault, done=done,
                                fault="Redis killed and restarted empty mid-job")
    assert not problems, "\n".join(problems) + f"\nlogs in {stack.log_dir}"
