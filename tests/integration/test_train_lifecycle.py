"""A train run's attempts are fenced: a superseded attempt writes nothing and cannot succeed (SQLite and
PostgreSQL, no Celery)."""
from datetime import timedelta

from sqlalchemy import select

from shared.core.db import session_scope
from shared.core.tables import Job, TrainRun, utcnow
from shared.schemas.training import TrainRequest
from shared.services.train_jobs import create_train_job
from worker.training import lifecycle as train_lifecycle


def make_run(url) -> str:
    req = TrainRequest.model_validate({
        "model": "digits", "task": "classification", "input_size": 32, "epochs": 2,
        "dataset": {"path": "digits/all.csv", "image_column": "image", "label_column": "label"},
        "base": {"architecture": "vgg", "width": 8}})
    with session_scope(url) as s:
        return create_train_job(s, req).id


def claim(url, job_id, worker):
    with session_scope(url) as s:
        run = train_lifecycle.claim(s, job_id, worker=worker, heartbeat_timeout=60, max_attempts=3)
        return run if isinstance(run, str) else run.attempts


def go_silent(url, job_id, seconds=600):
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        job.heartbeat_at = job.heartbeat_at - timedelta(seconds=seconds)


def test_a_superseded_training_attempt_writes_nothing_and_cannot_succeed(configured):
    job_id = make_run(configured.database_url)
    first = claim(configured.database_url, job_id, "w1")
    go_silent(configured.database_url, job_id)  # w1 froze (SIGSTOP, a long outage)
    with session_scope() as s:
        assert train_lifecycle.take_back(s, job_id, utcnow() - timedelta(seconds=60))
    second = claim(configured.database_url, job_id, "w2")
    assert (first, second) == (1, 2)
    with session_scope() as s:  # w1 wakes up
        assert train_lifecycle.heartbeat(s, job_id, first, epoch=1, phase="training") == train_lifecycle.SUPERSEDED
        train_lifecycle.record_epoch(s, job_id, 1, {"loss": 9.9}, 1.0, "/old/epoch-0001.keras", first)
        assert not train_lifecycle.succeed(s, job_id, first, holdout_metrics={"accuracy": 0.1})
        assert not train_lifecycle.release(s, job_id, first, "stale")
        train_lifecycle.fail(s, job_id, "stale failure", first)
    with session_scope() as s:
        run, job = s.get(TrainRun, job_id), s.get(Job, job_id)
        assert (run.state, run.attempts, run.epoch, run.checkpoint_path, run.holdout_metrics) == \
            ("running", 2, 0, None, None)
        assert (job.status, job.error) == ("running", None)
        assert train_lifecycle.heartbeat(s, job_id, second, phase="training") == "running"
        assert train_lifecycle.succeed(s, job_id, second, holdout_metrics={"accuracy": 0.9})
    with session_scope() as s:
        assert s.scalar(select(Job.status).where(Job.id == job_id)) == "succeeded"


def test_the_sweeper_does_not_take_back_a_run_whose_heartbeat_moved_since_it_looked(configured):
    job_id = make_run(configured.database_url)
    claim(configured.database_url, job_id, "w1")  # a fresh claim commits between the read and the lock
    with session_scope() as s:
        assert not train_lifecycle.take_back(s, job_id, utcnow() - timedelta(seconds=60))
        assert s.get(TrainRun, job_id).state == "running"
