"""Worker processes as they report themselves: each one's row in `workers`, upserted by the process every few
seconds (worker/presence.py), and the list the operations page shows, those seen within a window, each with the
jobs it holds now (read from the chunks and training runs it was given).

Invariants: a report is an upsert keyed by the Celery node name, safe to repeat and to race (two first reports
both succeed); `last_seen_at` never moves back (a late report of an older time leaves it); rows are never deleted
here: a stopped worker simply ages out of the window.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core import keyset
from shared.core.db import insert_ignoring_conflicts
from shared.core.keyset import Key
from shared.core.states import ChunkState, RunState
from shared.core.tables import Chunk, TrainRun, WorkerProcess, utcnow

DEFAULT_SEEN_WITHIN = 300  # seconds
MAX_SEEN_WITHIN = 30 * 24 * 3600


def record_worker(session: Session, *, name: str, hostname: str, pid: int, role: str, queues: list[str],
                  started_at: datetime, at: datetime) -> None:
    """Upsert the process's row: who it is, and that it was alive at `at`."""
    row = {"name": name, "hostname": hostname, "pid": pid, "role": role, "queues": sorted(queues),
           "started_at": started_at, "last_seen_at": at}
    if insert_ignoring_conflicts(session, WorkerProcess.__table__, [row], ["name"]):
        return
    worker = session.get(WorkerProcess, name, with_for_update=True)
    if worker.last_seen_at < at:
        for key, value in row.items():
            setattr(worker, key, value)


def worker_json(worker: WorkerProcess, current_jobs: list[str]) -> dict:
    return {"name": worker.name, "hostname": worker.hostname, "pid": worker.pid, "role": worker.role,
            "queues": list(worker.queues), "started_at": worker.started_at, "last_seen_at": worker.last_seen_at,
            "current_jobs": current_jobs}


def current_jobs(session: Session) -> dict[str, list[str]]:
    """Worker name -> the jobs whose chunks or training it holds now (delivered or running). A task records its
    worker as "<node name>:<pool pid>" (worker/tasks.py), a delivery as the node name alone."""
    held: dict[str, set[str]] = {}
    for table, states in ((Chunk, (ChunkState.DELIVERED, ChunkState.RUNNING)),
                          (TrainRun, (RunState.DELIVERED, RunState.RUNNING))):
        query = select(table.worker, table.job_id).where(table.state.in_(states), table.worker.is_not(None))
        for worker, job_id in session.execute(query):
            held.setdefault(worker.rsplit(":", 1)[0] if ":" in worker else worker, set()).add(job_id)
    return {name: sorted(jobs) for name, jobs in held.items()}


def workers_page(session: Session, *, seen_within: int, limit: int,
                 after: Key | None = None) -> tuple[list[dict], Key | None]:
    """Workers seen in the last `seen_within` seconds, by name (keyed by it)."""
    query = select(WorkerProcess).where(WorkerProcess.last_seen_at >= utcnow() - timedelta(seconds=seen_within))
    rows, next_key = keyset.page(session, query, (WorkerProcess.name,), after=after, limit=limit,
                                 key_of=lambda row: (row[0].name,))
    held = current_jobs(session) if rows else {}
    return [worker_json(row[0], held.get(row[0].name, [])) for row in rows], next_key
