"""A bounded load test on loopback: 50 clients, each with its own token, submit small score jobs and poll
them for a fixed time against gunicorn with a real worker. No 5xx, no job lost or accepted twice; the
figures per endpoint go to docs/reliability.md (speed is reported, never asserted)."""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter, defaultdict

import pytest
import requests
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import Job
from shared.services import tokens
from tests.integration.faults.checker import score_job_check
from tests.integration.faults.report import LoadRow
from tests.integration.faults.stack import FaultStack, expected_pageviews, items_for, register_model, write_photos

pytestmark = [pytest.mark.faults]
CLIENTS = 50
SECONDS = float(os.environ.get("IMGQ_LOAD_SECONDS", "60"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Client(threading.Thread):
    """Submit a 4-item score job, poll it until it ends, read its results; again until the deadline."""

    def __init__(self, stack, token: str, model: str, items: list[dict], deadline: float, log: list):
        super().__init__(daemon=True)
        self.stack, self.model, self.items, self.deadline, self.log = stack, model, items, deadline, log
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.accepted: list[str] = []

    def timed(self, name: str, method: str, path: str, **kw):
        started = time.perf_counter()
        resp = self.http.request(method, self.stack.url(path), timeout=60, **kw)
        self.log.append((name, resp.status_code, (time.perf_counter() - started) * 1000))
        return resp

    def run(self) -> None:
        n = 0
        while time.time() < self.deadline:
            n += 1
            batch = [self.items[(n + k) % len(self.items)] for k in range(4)]
            resp = self.timed("POST /api/v1/jobs/score", "POST", "/api/v1/jobs/score",
                              json={"model": self.model, "items": batch, "cache": False},
                              headers={"Idempotency-Key": uuid.uuid4().hex})
            if resp.status_code != 202:
                time.sleep(float(resp.headers.get("Retry-After", 1)))
                continue
            job_id = resp.json()["id"]
            self.accepted.append(job_id)
            while time.time() < self.deadline + 120:
                status = self.timed("GET /api/v1/jobs/<id>", "GET", f"/api/v1/jobs/{job_id}").json().get("status")
                if status not in ("preparing", "queued", "running"):
                    break
                time.sleep(0.5)
            self.timed("GET /api/v1/jobs/<id>/results", "GET", f"/api/v1/jobs/{job_id}/results")


def test_fifty_clients_for_a_minute_get_no_5xx_and_lose_or_duplicate_no_job(tmp_path, fault_db, fault_broker,
                                                                            model_files, fault_report):
    stack = FaultStack(tmp_path / "stack", fault_db, fault_broker, IMGQ_CHUNK_SIZE="4", IMGQ_BATCH_SIZE="4",
                       IMGQ_RATE_LIMIT="50/second")
    stack.web_workers = 2
    try:
        stack.start()
        model = register_model(stack, model_files["regression"])
        paths = write_photos(stack.data / "load", 40, seed=9)
        items, expected = items_for(paths, stack.data), expected_pageviews(model_files["regression"], paths)
        with session_scope(fault_db) as s:
            secrets = [tokens.create_token(s, f"client-{k}", "read,score")[1] for k in range(CLIENTS)]
        log: list = []
        started = time.time()
        clients = [Client(stack, secret, model, items, started + SECONDS, log) for secret in secrets]
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=SECONDS + 300)
        elapsed = time.time() - started
        accepted = [job_id for c in clients for job_id in c.accepted]
        for job_id in accepted:
            assert stack.wait_job(job_id, timeout=180)["status"] == "succeeded"
        with session_scope(fault_db) as s:
            in_db = s.scalar(select(func.count()).select_from(Job).where(Job.kind == "score"))
        lost = duplicated = 0
        for job_id in accepted:
            check = score_job_check(fault_db, job_id, _expected_for(fault_db, job_id, expected))
            assert check.ok, check.violations
            lost, duplicated = lost + check.lost, duplicated + check.duplicated
        by_endpoint: dict[str, list] = defaultdict(list)
        for name, status, ms in log:
            by_endpoint[name].append((status, ms))
        rows = []
        for name, calls in sorted(by_endpoint.items()):
            ms = [m for _, m in calls]
            statuses = Counter(status for status, _ in calls)
            rows.append(LoadRow(name, len(calls), len(calls) / elapsed, percentile(ms, 0.5), percentile(ms, 0.95),
                                percentile(ms, 0.99), ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))))
        fault_report.record_load(rows, f"{CLIENTS} clients, each with its own read+score token, for {elapsed:.0f} s "
                                       f"against gunicorn (2 processes) and one CPU worker on PostgreSQL and Redis; "
                                       f"{len(accepted)} jobs accepted, {in_db} in the database, {lost} items lost, "
                                       f"{duplicated} duplicated")
        server_errors = [(name, status) for name, status, _ in log if status >= 500]
        assert not server_errors, Counter(server_errors)
        assert in_db == len(accepted) and lost == duplicated == 0
    finally:
        stack.stop()


def _expected_for(url: str, job_id: str, expected: dict) -> dict:
    from shared.core.tables import JobItem

    with session_scope(url) as s:
        ids = list(s.scalars(select(JobItem.item_id).where(JobItem.job_id == job_id)))
    return {i: expected[i] for i in ids}
