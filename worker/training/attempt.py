"""One training attempt's link with its run row: liveness, cancellation and fencing.

The AttemptHeartbeat tells the database every few seconds that the attempt lives (with its progress), on the
worker's one heartbeat helper (worker/heartbeat.py), and learns whether a client canceled the job or a newer
attempt took the run over (this one was presumed dead). The training loop turns what it learned into Canceled or
Superseded at its next check; a batch ends early for both (fitting.EpochRecorder).

Invariants: every write passes the attempt number to `lifecycle`, so a superseded attempt writes nothing;
every write waits out a database outage for up to OUTAGE_PATIENCE seconds before the attempt gives up
(and is retried from its last checkpoint).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from shared.core.db import retry_on_outage, session_scope
from shared.core.states import JobStatus
from worker.heartbeat import Heartbeat
from worker.training import lifecycle

OUTAGE_PATIENCE = 600.0  # seconds a training waits out a database outage before it gives up the attempt
ORPHANED = 75  # exit code when the worker that started this process is gone: another worker takes the run up


class Canceled(Exception):
    """A client canceled the job: stop, and mark the run canceled."""


class Superseded(Exception):
    """A newer attempt owns the run (this one was presumed dead): stop without writing anything."""


def patiently(fn, *args, **kwargs):
    """fn(*args, **kwargs), tried again while the database is unreachable, for up to OUTAGE_PATIENCE seconds."""
    return retry_on_outage(lambda: fn(*args, **kwargs), within=OUTAGE_PATIENCE)


class AttemptHeartbeat:
    """Tells the database this process lives (every `interval` seconds, with `progress`) and learns whether
    the job was canceled (`canceled`) or the run superseded (`superseded`). A process whose parent (the worker
    that started it) is gone exits at its next beat, so another worker takes the run up."""

    def __init__(self, job_id: str, interval: float, attempt: int | None = None):
        self.job_id, self.interval, self.attempt = job_id, interval, attempt
        self.canceled = threading.Event()
        self.superseded = threading.Event()
        self.progress: dict = {}
        self._parent = os.getppid()
        self._beats = Heartbeat(self._beat_unless_orphaned, interval, label=f"train job {job_id}")

    def beat(self) -> None:
        with session_scope() as session:
            status = lifecycle.heartbeat(session, self.job_id, self.attempt, **dict(self.progress))
        self.heard(status)

    def heard(self, status: str) -> None:
        """What lifecycle.heartbeat answered: the job's status, or SUPERSEDED."""
        if status == JobStatus.CANCELED:
            self.canceled.set()
        elif status == lifecycle.SUPERSEDED:
            self.superseded.set()

    def _beat_unless_orphaned(self) -> None:
        if os.getppid() != self._parent:  # the worker that started us is gone: stop, be taken up again
            os._exit(ORPHANED)
        self.beat()

    def start(self) -> None:
        self._beats.start()

    def stop(self) -> None:
        self._beats.stop()


def start_heartbeat(job_id: str, attempt: int | None, interval: float, **progress) -> AttemptHeartbeat:
    """A running AttemptHeartbeat whose first beat (with `progress`) is already recorded."""
    heartbeat = AttemptHeartbeat(job_id, interval=interval, attempt=attempt)
    heartbeat.progress.update(progress)
    patiently(heartbeat.beat)
    heartbeat.start()
    return heartbeat


def report(heartbeat: AttemptHeartbeat, **progress) -> None:
    """Record `progress` now rather than at the next beat."""
    heartbeat.progress.update(progress)
    patiently(heartbeat.beat)


def stop_if_told(heartbeat: AttemptHeartbeat) -> None:
    """Raise Superseded or Canceled when the heartbeat learned so."""
    if heartbeat.superseded.is_set():
        raise Superseded()
    if heartbeat.canceled.is_set():
        raise Canceled()


def record_epoch(job_id: str, attempt: int | None, number: int, metrics: dict, seconds: float, path: Path) -> None:
    """Epoch `number` (1-based) finished and its checkpoint file is in place: both recorded in one transaction."""
    def write():
        with session_scope() as session:
            lifecycle.record_epoch(session, job_id, number, metrics, seconds, str(path), attempt)

    patiently(write)


def owned(job_id: str, attempt: int | None) -> bool:
    """The attempt still owns the run."""
    with session_scope() as session:
        return lifecycle.owns(session, job_id, attempt)
