"""A randomized, Jepsen-style run: a client submits score and train jobs while a seeded driver crashes
workers, pool processes, Redis, PostgreSQL and the web front at random moments. Afterwards every process
and server is brought back, every accepted job must end, and the checker reads what the jobs wrote.

Replay a run with IMGQ_FAULT_SEED=<seed> (printed at the start, in the assertion and in the report).
IMGQ_FAULT_SECONDS sets how long faults are injected (default 150), IMGQ_FAULT_DRAIN_SECONDS how long the
jobs may take to end once everything is back (default 360). Invariants: those of tests/integration/faults/checker.py,
plus every accepted score job succeeded, a succeeded train job ran all the epochs it asked for, and the
database holds exactly the jobs accepted (a submission retried with its Idempotency-Key is one job).
The driver also plays the supervisor: a process that exits on its own is logged and started again.
"""
from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import Chunk, Job, TrainMetric, TrainRun
from tests.integration.faults.checker import TERMINAL, check_train_job, score_job_check
from tests.integration.faults.stack import (
    FaultStack,
    expected_pageviews,
    register_model,
    write_digits,
    write_photos,
)

pytestmark = [pytest.mark.faults]

MODEL = "pv-random"
PHOTO_SETS = ("set-a", "set-b", "set-c")
PHOTOS_PER_SET = 300
BROKEN = {"truncated": "broken/truncated.jpg", "text": "broken/text.jpg", "missing": "broken/missing.jpg"}
TRAIN_JOBS = 2
FAULT_WEIGHTS = {"kill_worker": 3, "kill_pool_child": 3, "restart_redis": 2, "stop_postgres": 2, "kill_web": 2}


@dataclass
class PlannedJob:
    at: float  # seconds after the faults start
    kind: str  # "score" or "train"
    body: dict
    key: str  # its Idempotency-Key, the same on every retry
    expected: dict | int  # score: item id -> outputs, or None for an error; train: the epochs asked for


@dataclass
class Accepted:
    planned: PlannedJob
    job_id: str
    tries: int
    replayed: bool  # a retry found the job an earlier, unanswered try had created


# ---------------------------------------------------------------- the workload

def write_inputs(stack: FaultStack, model_file: Path) -> dict[str, dict]:
    """Photo sets with the outputs a fault-free run gives each photo; broken files; the digits."""
    expected = {}
    for k, name in enumerate(PHOTO_SETS):
        paths = write_photos(stack.data / name, PHOTOS_PER_SET, seed=k)
        expected[name] = expected_pageviews(model_file, paths)
    broken = stack.data / "broken"
    broken.mkdir()
    good = (stack.data / PHOTO_SETS[0] / "p00000.jpg").read_bytes()
    (broken / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (broken / "text.jpg").write_text("<html>404 not found</html>")
    write_digits(stack.data / "digits")
    return expected


def plan_jobs(rng: random.Random, seconds: float, photo_sets: dict[str, dict]) -> list[PlannedJob]:
    """Score jobs every 1.5-5 s over 90% of the run, and TRAIN_JOBS train jobs in its first 60%."""
    jobs, at = [], rng.uniform(0, 3)
    while at < 0.9 * seconds:
        jobs.append(plan_score_job(rng, at, photo_sets))
        at += rng.uniform(1.5, 5)  # often enough that kills land on chunks in flight
    jobs += [plan_train_job(rng, rng.uniform(0.05, 0.6) * seconds, k) for k in range(TRAIN_JOBS)]
    return sorted(jobs, key=lambda job: job.at)


def plan_score_job(rng: random.Random, at: float, photo_sets: dict[str, dict]) -> PlannedJob:
    folder = rng.choice(sorted(photo_sets))
    stems = sorted(rng.sample(sorted(photo_sets[folder]), rng.randint(50, 300)))
    items = [{"id": stem, "uri": f"{folder}/{stem}.jpg"} for stem in stems]
    expected = {stem: photo_sets[folder][stem] for stem in stems}
    if rng.random() < 0.4:  # a few broken items, expected to end as errors
        for kind in rng.sample(sorted(BROKEN), rng.randint(1, 3)):
            items.insert(rng.randrange(len(items) + 1), {"id": f"broken-{kind}", "uri": BROKEN[kind]})
            expected[f"broken-{kind}"] = None
    body = {"model": MODEL, "items": items, "cache": rng.random() < 0.3}
    return PlannedJob(at, "score", body, _key(rng), expected)


def plan_train_job(rng: random.Random, at: float, k: int) -> PlannedJob:
    epochs = rng.randint(3, 4)
    body = {"model": f"digits-random-{k + 1}", "task": "classification",
            "dataset": {"path": "digits/all.csv", "image_column": "image", "id_column": "id",
                        "label_column": "label"},
            "base": {"architecture": "vgg", "width": 8}, "input_size": 32, "epochs": epochs, "batch_size": 32,
            "optimizer": {"name": "adam", "learning_rate": 0.002}, "early_stopping": None}
    return PlannedJob(at, "train", body, _key(rng), epochs)


def _key(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# ---------------------------------------------------------------- the client

class Client(threading.Thread):
    """Submits the planned jobs at their times; a try the web front or a server did not answer (connection
    error, 5xx) is retried with the same Idempotency-Key until `give_up_at`."""

    def __init__(self, stack: FaultStack, plan: list[PlannedJob], t0: float, give_up_at: float):
        super().__init__(name="fault-client", daemon=True)
        self.stack, self.plan, self.t0, self.give_up_at = stack, plan, t0, give_up_at
        self.accepted: list[Accepted] = []
        self.rejected: list[str] = []  # submissions neither accepted nor retryable
        self.server_errors: Counter = Counter()  # answers other than 202 and 503, or no answer
        self.retries = 0
        self.crash: str | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            for job in self.plan:
                if self.stopping.wait(max(0.0, self.t0 + job.at - time.monotonic())):
                    return
                self._submit(job)
        except Exception:  # noqa: BLE001 (a thread's boundary: the test reports it)
            self.crash = traceback.format_exc()

    def _submit(self, job: PlannedJob) -> None:
        tries = 0
        while True:
            tries += 1
            try:
                resp = self.stack.http.post(self.stack.url(f"/api/v1/jobs/{job.kind}"), json=job.body, timeout=60,
                                     headers={"Idempotency-Key": job.key})
                outcome = str(resp.status_code)
            except requests.RequestException as exc:
                resp, outcome = None, type(exc).__name__
            if resp is not None and resp.status_code == 202:
                replayed = resp.headers.get("Idempotent-Replayed") == "true"
                self.accepted.append(Accepted(job, resp.json()["id"], tries, replayed))
                return
            if resp is not None and resp.status_code < 500:
                self.rejected.append(f"{job.kind} job {job.key} rejected: {resp.status_code} {resp.text[:300]}")
                return
            if outcome != "503":
                self.server_errors[outcome] += 1
            if time.monotonic() > self.give_up_at or self.stopping.is_set():
                self.rejected.append(f"{job.kind} job {job.key} never accepted in {tries} tries (last: {outcome})")
                return
            self.retries += 1
            time.sleep(1.0)


# ---------------------------------------------------------------- the fault driver

class FaultDriver(threading.Thread):
    """Injects a random fault every 3-8 s (seeded), heals each after a random moment (faults may overlap),
    and restarts any process that exited without being killed. `log` holds one line per event."""

    def __init__(self, stack: FaultStack, pg, broker, rng: random.Random, t0: float, until: float):
        super().__init__(name="fault-driver", daemon=True)
        self.stack, self.pg, self.broker, self.rng, self.t0, self.until = stack, pg, broker, rng, t0, until
        self.log: list[str] = []
        self.faults: Counter = Counter()
        self.exits: list[str] = []  # processes that exited on their own
        self.down: dict[str, tuple[float, str]] = {}  # target -> (heal at, fault)
        self.restarted: dict[str, float] = {}  # process -> when it was last started after exiting on its own
        self.crash: str | None = None
        self.stopping = threading.Event()

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.t0:6.1f}s {text}")

    def run(self) -> None:
        try:
            next_fault = time.monotonic() + self.rng.uniform(3, 8)
            while time.monotonic() < self.until and not self.stopping.is_set():
                self.heal(due_only=True)
                self.supervise()
                if time.monotonic() >= next_fault:
                    self.inject()
                    next_fault = time.monotonic() + self.rng.uniform(3, 8)
                time.sleep(0.2)
        except Exception:  # noqa: BLE001 (a thread's boundary: the test reports it)
            self.crash = traceback.format_exc()
            self.note(f"driver crashed: {self.crash.splitlines()[-1]}")

    def inject(self) -> None:
        kind = self.rng.choices(list(FAULT_WEIGHTS), weights=list(FAULT_WEIGHTS.values()))[0]
        workers = [w for w in self.stack.worker_names if w not in self.down]
        if kind in ("kill_worker", "kill_pool_child"):
            if not workers:
                return
            target = self.rng.choice(workers)
            if kind == "kill_worker":
                self.stack.kill_worker(target)
                self._down(target, kind, self.rng.uniform(1, 6))
            else:
                pid = self.stack.kill_pool_child(target)
                self.note(f"kill_pool_child {target} " + (f"(pid {pid})" if pid else "(no pool process yet)"))
                self.faults[kind] += 1
        elif kind == "restart_redis":
            self.broker.restart()
            self.note("restart_redis (empty)")
            self.faults[kind] += 1
        elif kind == "stop_postgres" and "postgres" not in self.down:
            self.pg.stop(mode="immediate")
            self._down("postgres", kind, self.rng.uniform(2, 8))
        elif kind == "kill_web" and "web" not in self.down:
            self.stack.kill_web()
            self._down("web", kind, self.rng.uniform(1, 5))

    def _down(self, target: str, kind: str, for_seconds: float) -> None:
        self.down[target] = (time.monotonic() + for_seconds, kind)
        self.faults[kind] += 1
        self.note(f"{kind} {target} (back in {for_seconds:.1f}s)")

    def heal(self, due_only: bool = False) -> None:
        for target, (at, _kind) in list(self.down.items()):
            if due_only and time.monotonic() < at:
                continue
            if target == "postgres":
                self.pg.start()
            elif target == "web":
                self.stack.start_web()
            else:
                self.stack.start_worker(target)
            del self.down[target]
            self.note(f"{target} started again")

    def supervise(self) -> None:
        """Start again any process that exited although no fault is holding it down."""
        processes = {"web": self.stack.web, "maintenance": self.stack.maintenance, **self.stack.workers}
        for name, process in processes.items():
            if name in self.down or process is None or process.poll() is None:
                continue
            if time.monotonic() - self.restarted.get(name, 0.0) < 2.0:
                continue  # it failed to start a moment ago: a supervisor backs off too
            self.restarted[name] = time.monotonic()
            self.exits.append(f"{name} exited on its own with code {process.returncode}")
            self.note(f"{name} exited on its own (code {process.returncode}); started again")
            if name == "web":
                self.stack.start_web()
            elif name == "maintenance":
                self.stack.start_maintenance()
            else:
                self.stack.start_worker(name)

    def restore(self) -> None:
        """Everything up: pending heals now, Redis running, every process alive, the web front healthy."""
        self.heal()
        if not self.pg.is_up():
            self.pg.start()
        if not self.broker.is_up():
            self.broker.restart()
            self.note("redis was down at the end; started again (empty)")
        deadline = time.monotonic() + 180
        while True:
            self.supervise()
            try:
                self.stack.wait_healthy(10)
                break
            except RuntimeError:  # a process exited, or the web front is not answering yet
                if time.monotonic() > deadline:
                    raise
        self.note("everything restored")


# ---------------------------------------------------------------- waiting and checking

def wait_terminal(url: str, job_ids: list[str], timeout: float) -> dict[str, str]:
    """The jobs' statuses once all are terminal, or as they are after `timeout` seconds."""
    deadline, statuses = time.monotonic() + timeout, {}
    while True:
        with contextlib.suppress(Exception), session_scope(url) as session:  # the database may be recovering
            statuses = dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids))).all())
        if all(statuses.get(j) in TERMINAL for j in job_ids) or time.monotonic() > deadline:
            return statuses
        time.sleep(2.0)


def check_jobs(url: str, accepted: list[Accepted]) -> tuple[list[str], dict]:
    """Every accepted job against what it should produce; figures for the report."""
    violations, figures = [], Counter()
    for job in accepted:
        if job.planned.kind == "score":
            check = score_job_check(url, job.job_id, job.planned.expected)
            violations += check.violations
            if check.status in TERMINAL and check.status != "succeeded":
                violations.append(f"score job {job.job_id} is {check.status!r}, expected to succeed")
            figures["lost"] += check.lost if check.status in TERMINAL else max(0, check.items - check.results)
            figures["duplicated"] += check.duplicated
            figures["items"] += check.items
            figures["expected errors"] += sum(v is None for v in job.planned.expected.values())
        else:
            violations += check_train_job(url, job.job_id) + check_all_epochs(url, job)
    return violations, figures


def check_all_epochs(url: str, job: Accepted) -> list[str]:
    """Without early stopping, a succeeded train job ran every epoch it asked for."""
    with session_scope(url) as session:
        status = session.scalar(select(Job.status).where(Job.id == job.job_id))
        last = session.scalar(select(func.max(TrainMetric.epoch)).where(TrainMetric.job_id == job.job_id))
    if status == "succeeded" and last != job.planned.expected:
        return [f"train job {job.job_id} succeeded after epoch {last}, but asked for {job.planned.expected}"]
    return []


def check_accepted_once(url: str, accepted: list[Accepted]) -> tuple[list[str], int]:
    """The database holds exactly the accepted jobs, one per Idempotency-Key. Returns the violations and
    the items of jobs no submission was answered for (duplicates)."""
    with session_scope(url) as session:
        # the client's score and train jobs (registering the model made a job of kind `import` too)
        rows = session.execute(select(Job.id, Job.idempotency_key, Job.total_items)
                               .where(Job.kind.in_(("score", "train")))).all()
    ids = {job.job_id for job in accepted}
    by_key = {job.planned.key: job.job_id for job in accepted}
    violations, extra_items = [], 0
    if len(ids) != len(accepted):
        violations.append(f"{len(accepted)} submissions were accepted as only {len(ids)} distinct jobs")
    for job_id, key, total_items in rows:
        if job_id not in ids:
            violations.append(f"job {job_id} (Idempotency-Key {key}) is in the database but was never accepted")
            extra_items += total_items or 0
        elif by_key.get(key) != job_id:
            violations.append(f"job {job_id} has Idempotency-Key {key}, accepted as job {by_key.get(key)}")
    if len(rows) != len(ids):
        violations.append(f"the database holds {len(rows)} jobs, {len(ids)} were accepted")
    return violations, extra_items


def disturbance(url: str, log_dir: Path) -> str:
    """How hard the faults hit: chunks that ran more than once, messages the broker lost and the sweeper resent,
    and task errors other than outages that the workers logged (not violations, but where to look first)."""
    with session_scope(url) as session:
        chunks = session.scalar(select(func.count()).select_from(Chunk))
        rerun = session.scalar(select(func.count()).select_from(Chunk).where(Chunk.attempts > 1))
    resent = (log_dir / "maintenance.log").read_text(errors="replace").count("sending them again")
    errors = Counter()
    for path in log_dir.glob("w*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if "raised unexpected:" in line:
                errors[line.split("raised unexpected:", 1)[1].strip().split("(", 1)[0]] += 1
    return (f"{rerun} of {chunks} chunks ran more than once; the sweeper resent lost messages {resent} times; "
            f"tasks that raised unexpectedly: {dict(errors) or 'none'}")


def train_outcomes(url: str, accepted: list[Accepted]) -> list[str]:
    """'<model> <status> after <n> attempts' for each train job, with the first line of a failure's reason."""
    out = []
    with session_scope(url) as session:
        for job in (j for j in accepted if j.planned.kind == "train"):
            row, run = session.get(Job, job.job_id), session.get(TrainRun, job.job_id)
            line = (f"{job.planned.body['model']} {row.status if row else 'missing'} after "
                    f"{run.attempts if run is not None else '?'} attempts")
            if row is not None and row.status == "failed":
                line += f" ({(row.error or '').strip().splitlines()[0][:120] if row.error else 'no reason'})"
            out.append(line)
    return out


def judge(url: str, client: Client, driver: FaultDriver, statuses: dict) -> tuple[list[str], Counter]:
    """All violations of the run, and the figures (items, lost, duplicated, expected errors)."""
    violations = [f"the fault driver crashed:\n{driver.crash}"] if driver.crash else []
    if client.crash:
        violations.append(f"the client crashed:\n{client.crash}")
    violations += client.rejected
    open_jobs = [j for j in client.accepted if statuses.get(j.job_id) not in TERMINAL]
    if open_jobs:
        violations.append(f"{len(open_jobs)} jobs not terminal after the drain: "
                          + ", ".join(f"{j.job_id} {statuses.get(j.job_id)}" for j in open_jobs[:10]))
    found, figures = check_jobs(url, client.accepted)
    twice, extra_items = check_accepted_once(url, client.accepted)
    figures["duplicated"] += extra_items
    return violations + found + twice, figures


# ---------------------------------------------------------------- the test

@dataclass
class Run:
    """One randomized run: its settings from the environment, and what happened."""
    seed: int
    seconds: float
    drain: float
    driver: FaultDriver | None = None
    client: Client | None = None
    drained: float | None = None
    statuses: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Run:
        seed = os.environ.get("IMGQ_FAULT_SEED") or str(random.SystemRandom().randrange(10**9))
        return cls(int(seed), float(os.environ.get("IMGQ_FAULT_SECONDS", "150")),
                   float(os.environ.get("IMGQ_FAULT_DRAIN_SECONDS", "360")))

    def under_faults(self, stack: FaultStack, plan: list[PlannedJob], pg, broker) -> None:
        """Faults and submissions for `seconds`; then everything restored and every accepted job waited for."""
        t0 = time.monotonic()
        self.driver = FaultDriver(stack, pg, broker, random.Random(self.seed), t0, t0 + self.seconds)
        self.client = Client(stack, plan, t0, give_up_at=t0 + self.seconds + self.drain)
        self.driver.start()
        self.client.start()
        self.driver.join()
        self.driver.restore()
        self.client.join(timeout=self.drain)
        self.client.stopping.set()
        restored = time.monotonic()
        self.statuses = wait_terminal(stack.database_url, [j.job_id for j in self.client.accepted], self.drain)
        self.drained = time.monotonic() - restored

    def stop(self) -> None:
        for thread in (self.driver, self.client):
            if thread is not None:
                thread.stopping.set()
                thread.join(timeout=120)

    def notes(self, plan: list[PlannedJob], figures: Counter, trains: list[str], hits: str,
              violations: list[str]) -> str:
        client, driver = self.client, self.driver
        scores = sum(j.planned.kind == "score" for j in client.accepted)
        faults = ", ".join(f"{n} {kind}" for kind, n in sorted(driver.faults.items()))
        return (f"{scores} score jobs ({figures['items']} items, {figures['expected errors']} of them broken) and "
                f"{len(trains)} train jobs ({'; '.join(trains)}) accepted of {len(plan)} planned; "
                f"faults over {self.seconds:.0f}s: {faults}; drained in {self.drained:.0f}s; "
                f"{client.retries} submission retries, {sum(j.replayed for j in client.accepted)} replayed; "
                f"tries without an answer or with a 5xx other than 503: {dict(client.server_errors) or 'none'}; "
                f"{hits}; "
                f"processes that exited on their own: {len(driver.exits)}; violations: {len(violations)}")


def say(capsys, text: str) -> None:
    """Print past pytest's capture: the seed and the fault log are shown whether the test passes or fails."""
    with capsys.disabled():
        print(text, flush=True)


@pytest.mark.timeout(3600)
def test_random_faults_lose_nothing_and_duplicate_nothing(tmp_path, fault_db, fault_broker, private_pg,
                                                         private_redis, model_files, fault_report, capsys):
    run = Run.from_env()
    say(capsys, f"\nrandomized fault run: seed {run.seed}, {run.seconds:.0f}s of faults; "
                f"replay with IMGQ_FAULT_SEED={run.seed}")
    stack = FaultStack(tmp_path, fault_db, fault_broker, workers=2)
    plan = plan_jobs(random.Random(run.seed + 1), run.seconds, write_inputs(stack, model_files["regression"]))
    try:
        stack.start(timeout=180)
        register_model(stack, model_files["regression"], name=MODEL)
        run.under_faults(stack, plan, private_pg, private_redis)
    finally:
        run.stop()
        if not private_pg.is_running():
            private_pg.start()
        stack.stop()
        if run.driver is not None:
            say(capsys, f"fault log (seed {run.seed}):\n  " + ("\n  ".join(run.driver.log) or "(none)"))
    violations, figures = judge(fault_db, run.client, run.driver, run.statuses)
    verdict = "fail" if violations else "pass"
    notes = run.notes(plan, figures, train_outcomes(fault_db, run.client.accepted),
                      disturbance(fault_db, stack.log_dir), violations)
    say(capsys, f"verdict {verdict}: {notes}")
    fault_report.record_random_run(run.seed, run.driver.log, verdict, notes)
    fault_report.record(fault=f"random mix of {sum(run.driver.faults.values())} faults",
                        case=f"seed {run.seed}: {len(run.client.accepted)} jobs, 2 workers",
                        recover_seconds=run.drained, items=figures["items"], lost=figures["lost"],
                        duplicated=figures["duplicated"], verdict=verdict,
                        notes=f"{run.seconds:.0f}s of faults; see the randomized run")
    assert not violations, (f"{len(violations)} violations (seed {run.seed}; replay with "
                            f"IMGQ_FAULT_SEED={run.seed}; logs in {stack.log_dir}):\n" + "\n".join(violations[:60])
                            + "\nfault log:\n" + "\n".join(run.driver.log))
