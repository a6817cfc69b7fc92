"""Workers seen recently: each real worker process reports itself (worker/presence.py) and GET /api/v1/workers lists
those seen within a window, by name, in pages; the report is an upsert whose last-seen time never moves back."""
from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest

from shared.core.db import session_scope
from shared.core.tables import WorkerProcess, utcnow
from shared.services.workers import record_worker

pytestmark = pytest.mark.integration


def seen(stack, **params) -> dict:
    resp = stack.http.get(stack.url("/api/v1/workers"), params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_for_roles(stack, roles: set[str], timeout: float = 120) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        by_role = {w["role"]: w for w in seen(stack)["workers"] if w["pid"] in stack_pids(stack)}
        if roles <= set(by_role):
            return by_role
        assert time.monotonic() < deadline, f"no {roles - set(by_role)} reported itself: {seen(stack)}"
        time.sleep(0.5)


def stack_pids(stack) -> set[int]:
    return {p.pid for p in (stack.worker, stack.maintenance) if p is not None}


def test_the_stacks_worker_and_maintenance_processes_report_themselves(pg_stack):
    by_role = wait_for_roles(pg_stack, {"worker", "maintenance"})
    worker, maintenance = by_role["worker"], by_role["maintenance"]
    assert worker["pid"] == pg_stack.worker.pid and maintenance["pid"] == pg_stack.maintenance.pid
    assert worker["hostname"] == socket.gethostname() and worker["name"].endswith(f"-{worker['pid']}@"
                                                                                  f"{socket.gethostname()}")
    assert {"score", "train"} <= set(worker["queues"]) and maintenance["queues"] == ["maintenance"]
    assert worker["started_at"] <= worker["last_seen_at"]
    first = worker["last_seen_at"]
    deadline = time.monotonic() + 120
    while wait_for_roles(pg_stack, {"worker"})["worker"]["last_seen_at"] == first:  # it reports again, by itself
        assert time.monotonic() < deadline, "the worker reported itself once only"
        time.sleep(0.5)


def test_a_worker_not_seen_within_the_window_is_left_out_and_pages_follow_names(pg_stack):
    wait_for_roles(pg_stack, {"worker", "maintenance"})
    an_hour_ago = utcnow() - timedelta(hours=1)
    with session_scope(pg_stack.database_url) as session:
        record_worker(session, name="gone-1@elsewhere", hostname="elsewhere", pid=1, role="worker",
                      queues=["score"], started_at=an_hour_ago - timedelta(hours=1), at=an_hour_ago)
    assert "gone-1@elsewhere" not in {w["name"] for w in seen(pg_stack)["workers"]}  # 300 s by default
    names = []
    page = seen(pg_stack, seen_within=7200, limit=1)
    while True:
        names += [w["name"] for w in page["workers"]]
        if page["next"] is None:
            break
        page = pg_stack.http.get(pg_stack.url(page["next"]), timeout=10).json()
    assert "gone-1@elsewhere" in names and names == sorted(names) and len(names) >= 3
    bad = pg_stack.http.get(pg_stack.url("/api/v1/workers"), params={"seen_within": 0}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["problems"][0]["field"] == "seen_within"


def test_a_report_is_an_upsert_whose_last_seen_never_moves_back(db_url):
    now = utcnow()
    me = {"name": "cpu-7@host", "hostname": "host", "pid": 7, "role": "worker", "queues": ["train", "score"],
          "started_at": now - timedelta(minutes=5)}
    with session_scope(db_url) as session:
        record_worker(session, **me, at=now)
        record_worker(session, **me, at=now)  # repeated: one row
    with session_scope(db_url) as session:
        record_worker(session, **{**me, "pid": 8}, at=now - timedelta(minutes=1))  # late and older: ignored
    with session_scope(db_url) as session:
        rows = session.query(WorkerProcess).all()
        assert [(w.name, w.pid, w.queues, w.last_seen_at) for w in rows] == [("cpu-7@host", 7, ["score", "train"],
                                                                                now)]
