"""Nightly schedules: slots from cron + time zone, exactly one job per slot, missed slots caught up once,
and the promotion gate deciding on the same holdout (driven with a fake clock)."""
import threading
import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.errors import InvalidRequest
from shared.core.tables import Job, ScheduleRun, TrainRun
from shared.services import schedules

UTC = timezone.utc
TRAIN = {"task": "classification", "dataset": {"path": "crawl/{date:%Y-%m-%d}/items.csv", "label_column": "label"},
         "base": {"architecture": "vgg"}, "input_size": 32, "epochs": 2}


def make(url, name="nightly", cron="0 2 * * *", tz="Europe/Paris", created=None, **kw):
    with session_scope(url) as s:
        row = schedules.create_schedule(s, name=name, cron=cron, timezone_name=tz, model_name="cats",
                                        train=kw.get("train", TRAIN), gate={"min_improvement": 0.01})
        row.created_at = created or datetime(2026, 11, 1, tzinfo=UTC)
        return row.id


def dispatch(now):
    sent = []
    out = schedules.dispatch_due(lambda ids: sent.extend(ids) or len(ids), now=now)
    return out, sent


def runs(url):
    with session_scope(url) as s:
        return list(s.execute(select(ScheduleRun.slot_at, ScheduleRun.job_id, ScheduleRun.decision)
                              .order_by(ScheduleRun.slot_at)))


def test_slots_follow_cron_in_its_time_zone():
    # 02:00 in Paris is 01:00 UTC in winter
    assert schedules.latest_slot("0 2 * * *", "Europe/Paris", datetime(2026, 11, 25, 9, tzinfo=UTC)) == \
        datetime(2026, 11, 25, 1, tzinfo=UTC)
    assert schedules.latest_slot("0 2 * * *", "Europe/Paris", datetime(2026, 11, 25, 1, tzinfo=UTC)) == \
        datetime(2026, 11, 25, 1, tzinfo=UTC)
    assert schedules.next_slot("0 2 * * *", "Europe/Paris", datetime(2026, 11, 25, 1, tzinfo=UTC)) == \
        datetime(2026, 11, 26, 1, tzinfo=UTC)


def test_a_slot_creates_exactly_one_job(configured, db_url):
    make(db_url)
    out, sent = dispatch(datetime(2026, 11, 25, 1, 0, 5, tzinfo=UTC))
    assert out == {"created": 1, "sent": 1} and len(sent) == 1
    assert dispatch(datetime(2026, 11, 25, 1, 30, tzinfo=UTC))[0]["created"] == 0  # same slot, later tick
    assert dispatch(datetime(2026, 11, 25, 23, 0, tzinfo=UTC))[0]["created"] == 0
    with session_scope(db_url) as s:
        run = s.get(TrainRun, sent[0])
        assert run.spec["dataset"]["path"] == "crawl/2026-11-25/items.csv"  # the slot's local date
        assert run.spec["model"] == "cats" and run.spec["gate"]["min_improvement"] == 0.01
        assert s.get(Job, sent[0]).kind == "train"
    out, sent = dispatch(datetime(2026, 11, 26, 1, 0, 1, tzinfo=UTC))  # the next night
    assert out["created"] == 1


def test_two_beats_at_once_still_make_one_job(configured, db_url):
    make(db_url)
    now = datetime(2026, 11, 25, 1, 0, 5, tzinfo=UTC)
    results = []
    threads = [threading.Thread(target=lambda: results.append(dispatch(now)[0])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["created"] for r in results) == 1
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1


def test_missed_slots_are_caught_up_once(configured, db_url):
    make(db_url)
    dispatch(datetime(2026, 11, 20, 1, 0, 5, tzinfo=UTC))
    # beat was down for four nights; when it comes back, one run (the latest slot), not four
    out, _ = dispatch(datetime(2026, 11, 24, 15, 0, tzinfo=UTC))
    assert out["created"] == 1
    assert [r.slot_at.replace(tzinfo=UTC) if r.slot_at.tzinfo is None else r.slot_at for r in runs(db_url)] == [
        datetime(2026, 11, 20, 1, tzinfo=UTC), datetime(2026, 11, 24, 1, tzinfo=UTC)]


def test_a_schedule_does_not_fire_for_slots_before_it_existed(configured, db_url):
    make(db_url, created=datetime(2026, 11, 25, 12, tzinfo=UTC))
    assert dispatch(datetime(2026, 11, 25, 13, tzinfo=UTC))[0]["created"] == 0
    assert dispatch(datetime(2026, 11, 26, 1, 0, 1, tzinfo=UTC))[0]["created"] == 1


def test_a_slot_that_cannot_train_is_recorded_as_failed(configured, db_url):
    make(db_url, train={**TRAIN, "base": {"version": "no-such-model"}})
    out, sent = dispatch(datetime(2026, 11, 25, 1, 0, 5, tzinfo=UTC))
    assert out["created"] == 0 and sent == []
    [(slot, job_id, decision)] = runs(db_url)
    assert decision == "failed" and job_id is None


@pytest.mark.parametrize("cron, tz, message", [("every night", "UTC", "cron"), ("0 2 * * *", "Mars/Base", "time zone")])
def test_bad_timing_is_refused(configured, db_url, cron, tz, message):
    with pytest.raises(InvalidRequest, match=message):
        make(db_url, cron=cron, tz=tz)


@pytest.mark.integration
def test_scheduled_fine_tunes_promote_when_better_and_keep_production_when_worse(pg_stack, digits):
    """Drive the dispatcher with a fake clock against the real stack: the first night's model becomes
    production; a much worse candidate the next night is kept out, with the reason recorded. The
    dispatcher here sends nothing: the stack's sweeper relays the committed jobs (the outbox)."""
    import os

    from shared.core.config import get_settings

    def enqueue_train(job_ids):
        return 0

    name = f"sched-{uuid.uuid4().hex[:6]}"
    env = {"DATABASE_URL": pg_stack.database_url, "BROKER_URL": pg_stack.env["BROKER_URL"],
           "IMGQ_HOME": pg_stack.env["IMGQ_HOME"], "IMGQ_DATA_ROOTS": pg_stack.env["IMGQ_DATA_ROOTS"]}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    from shared.core import db

    db.configure(get_settings())  # the dispatcher's sessions: the stack's database
    try:
        good = {"task": "classification", "input_size": 32, "epochs": 8, "batch_size": 32,
                "dataset": {"path": "digits/all.csv", "id_column": "id", "label_column": "label"},
                "base": {"architecture": "vgg"}, "optimizer": {"name": "adam", "learning_rate": 0.002}}
        body = {"name": name, "cron": "0 3 * * *", "timezone": "UTC", "model": name, "train": good,
                "gate": {"min_improvement": 0.01}}
        resp = pg_stack.http.post(pg_stack.url("/api/v1/schedules"), json=body, timeout=30)
        assert resp.status_code == 201, resp.text
        sid = resp.json()["id"]
        with session_scope(pg_stack.database_url) as s:
            # in the future: the stack's own schedule tick (the real clock) finds no slot of it to run
            s.get(schedules.Schedule, sid).created_at = datetime(2031, 11, 1, tzinfo=UTC)
        first = schedules.dispatch_due(enqueue_train, now=datetime(2031, 11, 24, 3, 0, 30, tzinfo=UTC))
        assert first["created"] == 1
        job = _wait_schedule_run(pg_stack, sid, 1)
        assert job["comparison"]["gate"]["decision"] == "promoted"
        versions = pg_stack.http.get(pg_stack.url(f"/api/v1/models/{name}/versions"), timeout=10).json()["versions"]
        assert versions[0]["aliases"] == ["production"]

        worse = {**good, "epochs": 1, "optimizer": {"name": "sgd", "learning_rate": 1e-6}}
        pg_stack.http.patch(pg_stack.url(f"/api/v1/schedules/{sid}"), json={"enabled": False}, timeout=10)
        with session_scope(pg_stack.database_url) as s:
            row = s.get(schedules.Schedule, sid)
            row.train, row.enabled = worse, True
        assert schedules.dispatch_due(enqueue_train, now=datetime(2031, 11, 25, 3, 0, 30, tzinfo=UTC))["created"] == 1
        job = _wait_schedule_run(pg_stack, sid, 2)
        gate_result = job["comparison"]["gate"]
        assert gate_result["decision"] == "kept" and "accuracy" in gate_result["reason"]
        assert job["comparison"]["production"] == f"{name}@1"
        described = pg_stack.http.get(pg_stack.url(f"/api/v1/schedules/{sid}"), timeout=10).json()
        assert [r["decision"] for r in described["runs"]] == ["kept", "promoted"]
        versions = pg_stack.http.get(pg_stack.url(f"/api/v1/models/{name}/versions"), timeout=10).json()["versions"]
        assert [v["aliases"] for v in versions] == [["production"], []]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def _wait_schedule_run(stack, schedule_id, n):
    with session_scope(stack.database_url) as s:
        job_id = s.scalars(select(ScheduleRun.job_id).where(ScheduleRun.schedule_id == schedule_id)
                           .order_by(ScheduleRun.slot_at)).all()[n - 1]
    job = stack.wait_job(job_id, timeout=600, poll=1.0)
    assert job["status"] == "succeeded", job
    return job


def test_added_since_last_run_reads_only_new_manifests(configured, db_url):
    train = {**TRAIN, "dataset": {**TRAIN["dataset"], "path": "crawl/*/items.csv", "added_since_last_run": True}}
    make(db_url, train=train)
    _, first = dispatch(datetime(2026, 11, 24, 1, 0, 5, tzinfo=UTC))
    _, second = dispatch(datetime(2026, 11, 25, 1, 0, 5, tzinfo=UTC))
    with session_scope(db_url) as s:
        assert s.get(TrainRun, first[0]).spec["dataset"]["added_since"] is None  # first night: everything
        since = s.get(TrainRun, second[0]).spec["dataset"]["added_since"]
    assert datetime.fromisoformat(since) == datetime(2026, 11, 24, 1, tzinfo=UTC)
