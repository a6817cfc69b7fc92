"""The web front and the maintenance process under faults: kill -9 of the web front after a 202 and in the
middle of an upload, two beat processes at once, and a dead maintenance process seen by /readyz and /metrics.

Each test runs a FaultStack (real gunicorn, Celery workers, maintenance worker with beat) on the private
servers, proves what a client may rely on with the checker and the API, and records a row in the report.
"""
from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from shared.core.db import session_scope
from shared.core.tables import Job, MaintenanceBeat, Schedule, ScheduleRun
from shared.tools.local_stack import LocalStack
from tests.integration.faults.checker import score_job_check
from tests.integration.faults.stack import (
    FaultStack,
    expected_pageviews,
    items_for,
    register_model,
    submit_items,
    wait_until,
    write_photos,
)

pytestmark = [pytest.mark.faults]

ORPHAN_AFTER = 10.0  # IMGQ_ORPHAN_UPLOAD_AFTER of the upload-crash test
RETENTION = 6.0  # IMGQ_UPLOAD_RETENTION of the retention test
SWEEP_INTERVAL = 2.0  # FAULT_ENV's IMGQ_SWEEP_INTERVAL
SWEEP_MAX_AGE = 20.0  # FAULT_ENV's IMGQ_SWEEP_MAX_AGE
SWEEPER_METRIC = "imgq_sweeper_last_run_timestamp_seconds"


@pytest.fixture
def stack_factory(tmp_path, fault_db, fault_broker):
    stacks = []

    def make(workers: int = 1, start: bool = True, **env) -> FaultStack:
        stack = FaultStack(tmp_path / f"stack{len(stacks)}", fault_db, fault_broker, workers=workers, **env)
        stacks.append(stack)
        return stack.start() if start else stack

    yield make
    for stack in stacks:
        stack.stop()


# ---------------------------------------------------------------- helpers of this module

def upload_dir(stack: FaultStack) -> Path:
    return Path(stack.env.get("IMGQ_UPLOAD_DIR") or Path(stack.env["IMGQ_HOME"]) / "uploads")


def folders(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.is_dir()} if path.is_dir() else set()


def writing(path: Path) -> set[str]:
    """Upload folders that already hold some bytes of a file."""
    return {name for name in folders(path) if any(f.stat().st_size for f in (path / name).iterdir())}


def listed_jobs(stack: FaultStack) -> list[dict]:
    """The score jobs the API lists (model imports are jobs too, of kind `import`)."""
    resp = stack.http.get(stack.url("/api/v1/jobs"), params={"limit": 500, "kind": "score"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["jobs"]


def multipart_body(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body built by hand (files as parts named "files") and its Content-Type."""
    boundary = f"imgq-{uuid.uuid4().hex}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts += [(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
               "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n" for filename, data in files]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class RawUpload(threading.Thread):
    """POST a body to /api/v1/jobs/score over a plain socket, `piece` bytes at a time with `pause` seconds
    between pieces; `sent` counts the bytes handed to the kernel, `response` or `error` is how it ended."""

    def __init__(self, port: int, body: bytes, content_type: str, piece: int = 64 * 1024, pause: float = 0.0,
                 token: str | None = None):
        super().__init__(daemon=True)
        self.port, self.body, self.content_type, self.piece, self.pause = port, body, content_type, piece, pause
        self.token = token
        self.sent = 0
        self.response: bytes | None = None
        self.error: OSError | None = None

    def run(self) -> None:
        head = (f"POST /api/v1/jobs/score HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
                + (f"Authorization: Bearer {self.token}\r\n" if self.token else "")
                + "Connection: close\r\n\r\n").encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
                sock.sendall(head)
                for start in range(0, len(self.body), self.piece):
                    sock.sendall(self.body[start:start + self.piece])
                    self.sent = min(len(self.body), start + self.piece)
                    if self.pause:
                        time.sleep(self.pause)
                chunks = []
                while block := sock.recv(65536):
                    chunks.append(block)
                self.response = b"".join(chunks)
        except OSError as exc:
            self.error = exc


class Prober(threading.Thread):
    """GET a URL every `every` seconds until stopped; `answers` holds (time, status code or the exception)."""

    def __init__(self, url: str, every: float = 0.5):
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.answers: list[tuple[float, object]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                answer: object = requests.get(self.url, timeout=10).status_code
            except requests.RequestException as exc:
                answer = exc
            self.answers.append((time.time(), answer))
            self._stop_event.wait(self.every)

    def stop(self) -> list[tuple[float, object]]:
        self._stop_event.set()
        self.join(30)
        return self.answers


def sweeper_metric(stack: FaultStack) -> float:
    text = stack.http.get(stack.url("/metrics"), timeout=10).text
    found = re.search(rf"^{SWEEPER_METRIC}\s+(\S+)$", text, re.MULTILINE)
    assert found, f"/metrics has no {SWEEPER_METRIC}:\n{text[:2000]}"
    return float(found.group(1))


def readyz(stack: FaultStack) -> tuple[int, dict]:
    resp = stack.http.get(stack.url("/readyz"), timeout=10)
    return resp.status_code, resp.json()


def readyz_answering(stack: FaultStack, status: int):
    """A condition for wait_until: /readyz's (status, body) once it answers `status`."""
    def condition():
        answer = readyz(stack)
        return answer if answer[0] == status else None
    return condition


def log_problems(text: str) -> list[str]:
    """Lines of a Celery log that show an error: tracebacks, ERROR or CRITICAL records."""
    return [line for line in text.splitlines()
            if "Traceback" in line or re.search(r"\b(ERROR|CRITICAL)\b", line)]


# ---------------------------------------------------------------- 1. the web front dies right after a 202

def test_a_web_front_killed_right_after_a_202_loses_nothing_and_a_retried_post_returns_the_same_job(
        stack_factory, model_files, fault_report):
    stack = stack_factory()
    model = register_model(stack, model_files["regression"])
    paths = write_photos(stack.data / "after-202", 48, seed=11)
    body = {"model": model, "items": items_for(paths, stack.data), "cache": False}
    key = f"after-202-{uuid.uuid4().hex}"
    resp = stack.http.post(stack.url("/api/v1/jobs/score"), json=body, headers={"Idempotency-Key": key}, timeout=60)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    killed_at = time.time()
    stack.kill_web()
    assert stack.web.poll() is not None
    with pytest.raises(requests.ConnectionError):
        stack.http.get(stack.url("/healthz"), timeout=5)
    def done_items():
        with session_scope(stack.database_url) as s:
            return s.get(Job, job_id).done_items

    wait_until(done_items, 120, "the workers to score items while no web front runs")
    done_while_down = done_items()
    stack.start_web()
    stack.wait_healthy(120)
    web_back = time.time() - killed_at
    job = stack.wait_job(job_id, timeout=300)
    finished = time.time() - killed_at
    again = stack.http.post(stack.url("/api/v1/jobs/score"), json=body, headers={"Idempotency-Key": key}, timeout=60)
    assert again.status_code == 202, again.text
    assert again.json()["id"] == job_id and again.headers.get("Idempotent-Replayed") == "true"
    assert [j["id"] for j in listed_jobs(stack)] == [job_id]  # no second job
    check = score_job_check(stack.database_url, job_id, expected_pageviews(model_files["regression"], paths))
    assert job["status"] == "succeeded" and check.ok, check.violations
    assert check.results == 48 and check.lost == check.duplicated == 0
    fault_report.record(fault="kill -9 of the web front right after a 202", case="score, Idempotency-Key",
                        recover_seconds=web_back, items=check.items, lost=check.lost, duplicated=check.duplicated,
                        verdict="pass",
                        notes=f"{done_while_down} items scored while it was down (restarted then); job done "
                              f"{finished:.0f} s after the kill; the retried POST replayed the same job")


# ---------------------------------------------------------------- 2. the web front dies during an upload

def test_a_web_front_killed_during_an_upload_creates_no_job_and_its_leftovers_are_swept(
        stack_factory, model_files, fault_report):
    stack = stack_factory(workers=0, IMGQ_ORPHAN_UPLOAD_AFTER=str(ORPHAN_AFTER))
    model = register_model(stack, model_files["regression"])
    uploads = upload_dir(stack)
    assert folders(uploads) == set()

    # a) killed while the body still arrives (three 4 MB files, 64 KiB every 10 ms)
    files = [(f"slow-{i}.jpg", os.urandom(4 << 20)) for i in range(3)]
    body, content_type = multipart_body({"model": model, "cache": "false"}, files)
    upload = RawUpload(stack.port, body, content_type, pause=0.01, token=stack.token)
    upload.start()
    wait_until(lambda: upload.sent >= len(body) * 0.4, 60, "40% of the slow upload sent")
    in_flight = folders(uploads)  # the body is still arriving: werkzeug spools it to temporary files first
    killed_at = time.time()
    stack.kill_web()
    upload.join(60)
    sent_share = upload.sent / len(body)
    assert not upload.response and upload.error is not None, "the cut-off upload got an answer"
    assert sent_share < 1.0
    left_over = folders(uploads)
    stack.start_web()
    stack.wait_healthy(120)
    web_back = time.time() - killed_at
    assert listed_jobs(stack) == []
    assert in_flight == set() and left_over == set(), \
        f"a body cut off while arriving left upload folders {in_flight | left_over}"
    fault_report.record(fault="kill -9 of the web front while a multipart body arrives",
                        case=f"upload, 3 x 4 MB, killed at {sent_share:.0%} sent", recover_seconds=web_back,
                        items=len(files), lost=0, duplicated=0, verdict="pass",
                        notes="no job; nothing left in the upload folder (werkzeug spools the body to "
                              "unlinked temporary files until it is whole)")

    # b) killed while the whole body is being written to its upload folder (three 24 MB files, sent at once)
    files = [(f"big-{i}.jpg", os.urandom(24 << 20)) for i in range(3)]
    body, content_type = multipart_body({"model": model, "cache": "false"}, files)
    upload = RawUpload(stack.port, body, content_type, piece=1 << 20, token=stack.token)
    upload.start()
    deadline = time.time() + 120
    while not (new := writing(uploads)) and time.time() < deadline:
        time.sleep(0.002)
    assert new, "the upload never reached its upload folder"
    killed_at = time.time()
    stack.kill_web()
    upload.join(60)
    [orphan] = new
    orphan_path = uploads / orphan
    written = sorted((p.name, p.stat().st_size) for p in orphan_path.iterdir())
    orphan_mtime = orphan_path.stat().st_mtime
    assert not upload.response, upload.response[:300]  # the connection closed without an answer
    stack.start_web()
    time.sleep(max(0.0, orphan_mtime + ORPHAN_AFTER - 2 - time.time()))
    assert orphan_path.is_dir(), "the orphan folder was removed before IMGQ_ORPHAN_UPLOAD_AFTER"
    wait_until(lambda: not orphan_path.exists(), ORPHAN_AFTER + 30, "the sweeper to remove the orphan folder")
    removed_after = time.time() - orphan_mtime
    stack.wait_healthy(120)
    assert listed_jobs(stack) == []
    with session_scope(stack.database_url) as s:
        assert s.scalars(select(Job.id).where(Job.kind == "score")).all() == []
    assert f"removed upload folder {orphan} (orphan)" in stack.log_text("maintenance")
    assert removed_after >= ORPHAN_AFTER - 0.5
    megabytes = sum(size for _, size in written) / 2 ** 20
    fault_report.record(fault="kill -9 of the web front while it writes an upload to its folder",
                        case="upload, 3 x 24 MB", recover_seconds=removed_after, items=len(files), lost=0,
                        duplicated=0, verdict="pass",
                        notes=f"no job; the orphan folder ({len(written)} file(s), {megabytes:.0f} MB written) was "
                              f"removed {removed_after:.1f} s after its last change (limit {ORPHAN_AFTER:g} s)")


def test_a_finished_upload_jobs_folder_is_removed_after_the_retention_and_its_results_stay_readable(
        stack_factory, model_files, fault_report):
    # orphan_after far below the job's run time: a folder its job still reads must not count as an orphan
    stack = stack_factory(IMGQ_UPLOAD_RETENTION=str(RETENTION), IMGQ_ORPHAN_UPLOAD_AFTER="1")
    model = register_model(stack, model_files["regression"])
    paths = write_photos(stack.data / "to-upload", 24, seed=21)
    files = [("files", (p.stem, p.read_bytes(), "image/jpeg")) for p in paths]
    resp = stack.http.post(stack.url("/api/v1/jobs/score"), data={"model": model, "cache": "false"}, files=files,
                         timeout=120)
    assert resp.status_code == 202, resp.text
    job_id, folder = resp.json()["id"], resp.json()["source"]["folder"]
    path = upload_dir(stack) / folder
    assert len(list(path.iterdir())) == len(paths)
    job = stack.wait_job(job_id, timeout=300)
    with session_scope(stack.database_url) as s:
        finished_at = s.get(Job, job_id).finished_at.timestamp()
    if time.time() - finished_at < RETENTION - 2:
        assert path.is_dir(), "the upload folder was removed before the retention was over"
    wait_until(lambda: not path.exists(), RETENTION + 30, "the sweeper to remove the finished job's upload folder")
    removed_after = time.time() - finished_at
    assert removed_after >= RETENTION - 0.5
    assert f"removed upload folder {folder} (retention over)" in stack.log_text("maintenance")
    check = score_job_check(stack.database_url, job_id, expected_pageviews(model_files["regression"], paths))
    assert job["status"] == "succeeded" and check.ok, check.violations
    results = stack.all_results(job_id)
    assert sorted(r["id"] for r in results) == sorted(p.stem for p in paths)
    assert all(r["status"] == "ok" and "pageviews" in r["outputs"] for r in results)
    assert stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["status"] == "succeeded"
    fault_report.record(fault="upload retention over (IMGQ_UPLOAD_RETENTION)", case="upload, 24 photos",
                        recover_seconds=removed_after, items=check.items, lost=check.lost,
                        duplicated=check.duplicated, verdict="pass",
                        notes=f"folder removed {removed_after:.1f} s after the job finished (retention "
                              f"{RETENTION:g} s); results still readable; not taken for an orphan while running")


# ---------------------------------------------------------------- 3. two beat processes at once

def sweeper_beats(url: str) -> list[tuple[str, datetime]]:
    with session_scope(url) as s:
        return [(row.name, row.last_at) for row in s.scalars(select(MaintenanceBeat))]


def schedule_slots(url: str, schedule_id: int) -> list[tuple[datetime, str | None, str | None, str | None]]:
    with session_scope(url) as s:
        return list(s.execute(select(ScheduleRun.slot_at, ScheduleRun.job_id, ScheduleRun.decision,
                                     ScheduleRun.reason).where(ScheduleRun.schedule_id == schedule_id)
                              .order_by(ScheduleRun.slot_at)))


def create_minutely_schedule(stack: FaultStack) -> int:
    """A schedule firing every minute whose base version does not exist: each slot is recorded (as failed)
    without a training, so slots can be counted in seconds rather than epochs."""
    train = {"task": "classification", "input_size": 32, "epochs": 1, "base": {"version": "no-such-model"},
             "dataset": {"path": "crawl/{date:%Y-%m-%d}/items.csv", "label_column": "label"}}
    resp = stack.http.post(stack.url("/api/v1/schedules"), timeout=30,
                         json={"name": f"every-minute-{uuid.uuid4().hex[:6]}", "cron": "* * * * *",
                               "timezone": "UTC", "model": "minutely", "train": train})
    assert resp.status_code == 201, resp.text
    schedule_id = resp.json()["id"]
    with session_scope(stack.database_url) as s:  # existing since before the current slot: it fires at once
        s.get(Schedule, schedule_id).created_at = datetime.now(timezone.utc) - timedelta(hours=1)
    return schedule_id


def test_two_beat_processes_at_once_lose_nothing_duplicate_nothing_and_take_each_schedule_slot_once(
        stack_factory, model_files, fault_report):
    stack = stack_factory(start=False, IMGQ_SCHEDULE_TICK="2")
    stack.authenticate()
    stack.start_web()
    stack.start_worker("w1")
    stack.start_maintenance()
    second = stack._spawn("maintenance2", ["maintenance", "--beat"])  # a second replica, started with the first
    try:
        stack.wait_healthy(120)
        assert second.poll() is None, stack.log_text("maintenance2")
        wait_until(lambda: readyz(stack)[0] == 200, 90, "/readyz to answer 200")
        model = register_model(stack, model_files["regression"])
        schedule_id = create_minutely_schedule(stack)
        batches = [write_photos(stack.data / f"two-beats-{k}", 32, seed=30 + k) for k in range(2)]
        job_ids = [submit_items(stack, model, items_for(paths, stack.data)) for paths in batches]
        beats = []
        deadline = time.time() + 150
        while len(schedule_slots(stack.database_url, schedule_id)) < 2 or len(beats) < 10:
            beats.append(sweeper_beats(stack.database_url))
            assert time.time() < deadline, "two schedule slots did not come within 150 s"
            time.sleep(1)
        jobs = [stack.wait_job(job_id, timeout=300) for job_id in job_ids]
        slots = schedule_slots(stack.database_url, schedule_id)
        assert second.poll() is None and stack.maintenance.poll() is None
    finally:
        LocalStack._terminate(second)
    checks = [score_job_check(stack.database_url, job_id, expected_pageviews(model_files["regression"], paths))
              for job_id, paths in zip(job_ids, batches)]
    for job, check in zip(jobs, checks):
        assert job["status"] == "succeeded" and check.ok, check.violations
    # the sweeper's record: one row, its time never going back, however the two sweepers interleave
    assert all([name for name, _ in sample] == ["sweeper"] for sample in beats), beats
    times = [sample[0][1] for sample in beats]
    assert times == sorted(times) and times[-1] > times[0]
    # each slot once, one a minute with no gap, each recorded as failed for the missing base version
    slot_times = [slot for slot, _, _, _ in slots]
    assert len(set(slot_times)) == len(slot_times)
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(slot_times)), slot_times
    assert all(job is None and decision == "failed" and "no-such-model" in (reason or "")
               for _, job, decision, reason in slots), slots
    logs = {name: stack.log_text(name) for name in ("maintenance", "maintenance2")}
    for name, text in logs.items():
        assert "Sending due task sweep" in text, f"{name} ran no beat"
        assert re.search(r"Task imgq\.sweep\[\S+\] succeeded", text), f"{name} ran no sweep"
    problems = {name: log_problems(text) for name, text in logs.items() if log_problems(text)}
    first_errors = "; ".join(f"{name}: {lines[0][:200]}" for name, lines in problems.items())
    fault_report.record(fault="two beat processes (a second `imgq maintenance --beat`)",
                        case="score x 2, schedule `* * * * *`", recover_seconds=None,
                        items=sum(c.items for c in checks), lost=sum(c.lost for c in checks),
                        duplicated=sum(c.duplicated for c in checks), verdict="fail" if problems else "pass",
                        notes=f"{len(slots)} schedule slots, one row each; one sweeper record, never going back; "
                              + (f"errors in the maintenance logs: {first_errors}" if problems
                                 else "no error in either maintenance log"))
    assert problems == {}, "\n\n".join(f"{name}.log:\n" + "\n".join(lines[:20]) for name, lines in problems.items())


# ---------------------------------------------------------------- 4. /readyz and /metrics see the sweeper stop

def test_readyz_and_metrics_tell_that_the_sweeper_stopped_and_that_it_is_back(stack_factory, fault_report):
    stack = stack_factory(workers=0)
    health = Prober(stack.url("/healthz"))
    health.start()
    killed_at = time.time()
    try:
        _, body = wait_until(readyz_answering(stack, 200), 90, "/readyz to answer 200")
        assert body["ready"] is True and body["problems"] == []
        first = sweeper_metric(stack)
        wait_until(lambda: sweeper_metric(stack) > first, 5 * SWEEP_INTERVAL, f"{SWEEPER_METRIC} to advance")

        killed_at = time.time()
        LocalStack._terminate(stack.maintenance, signal.SIGKILL)
        time.sleep(1)
        stopped_at = sweeper_metric(stack)
        _, body = wait_until(readyz_answering(stack, 503), SWEEP_MAX_AGE + 15,
                                  "/readyz to answer 503")
        noticed = time.time() - killed_at
        assert body["ready"] is False and any("sweeper" in p for p in body["problems"]), body
        assert body["sweeper_age_seconds"] > SWEEP_MAX_AGE and body["database"] == "ok" and body["broker"] == "ok"
        assert sweeper_metric(stack) == stopped_at
        assert time.time() - stopped_at > SWEEP_MAX_AGE

        restarted_at = time.time()
        stack.start_maintenance()
        _, body = wait_until(readyz_answering(stack, 200), 90, "/readyz to answer 200 again")
        back = time.time() - restarted_at
        assert body["ready"] is True and body["sweeper_age_seconds"] < SWEEP_MAX_AGE
        assert sweeper_metric(stack) > stopped_at
    finally:
        answers = health.stop()
    failures = [(round(t - killed_at, 1), a) for t, a in answers if a != 200]
    assert len(answers) > 20 and failures == [], failures
    fault_report.record(fault="kill -9 of the maintenance process (sweeper + beat)", case="/readyz, /metrics",
                        recover_seconds=back, items=0, lost=0, duplicated=0, verdict="pass",
                        notes=f"/readyz 503 naming the sweeper {noticed:.0f} s after the kill (limit "
                              f"{SWEEP_MAX_AGE:g} s); {SWEEPER_METRIC} stopped; /healthz 200 throughout "
                              f"({len(answers)} probes); ready again {back:.0f} s after the restart")
