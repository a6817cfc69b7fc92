"""Train jobs as the web front sees them: create, describe, metrics history, sweeps."""
from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core import keyset, names
from shared.core.db import get_or_404
from shared.core.errors import InvalidRequest
from shared.core.keyset import Key
from shared.core.states import JobKind, JobStatus, RunState
from shared.core.tables import Job, ModelVersion, Sweep, TrainMetric, TrainRun
from shared.schemas.training import SweepRequest, TrainRequest
from shared.services import model_registry


def create_train_job(session: Session, req: TrainRequest, *, sweep_id: str | None = None,
                     schedule_run_id: int | None = None, token_id: int | None = None) -> Job:
    """Insert the job and its train run in the caller's transaction; the caller enqueues after commit (a request's
    job through shared/services/submission.py, which also checks the token's cap and records its key)."""
    names.check_name(req.model, "model")
    parent = model_registry.resolve(session, req.base.version, "base.version") if req.base.version else None
    if parent is not None and parent.task != req.task:
        raise InvalidRequest(f"cannot fine-tune a {parent.task} model for {req.task}", field="base.version")
    spec = req.model_dump(mode="json")
    if parent is not None:
        spec["base"]["version"] = f"{parent.name}@{parent.version}"  # pin what 'production' meant now
    job = Job(id=str(uuid.uuid4()), kind=JobKind.TRAIN, status=JobStatus.QUEUED,
              model_version_id=parent.id if parent else None, model_ref=req.model,
              token_id=token_id,
              source={"type": "train", "dataset": req.dataset.path}, use_cache=True, total_items=0,
              done_items=0, failed_items=0, cached_items=0, total_chunks=0)
    session.add(job)
    session.flush()
    session.add(TrainRun(job_id=job.id, model_name=req.model, spec=spec, state=RunState.PENDING, attempts=0,
                         epoch=0, epochs_total=req.epochs, step=0, steps_per_epoch=0, checkpoint_epoch=0,
                         sweep_id=sweep_id, schedule_run_id=schedule_run_id))
    session.flush()
    return job


def train_json(session: Session, job: Job, run: TrainRun) -> dict:
    result = session.get(ModelVersion, run.result_version_id) if run.result_version_id else None
    parent = session.get(ModelVersion, job.model_version_id) if job.model_version_id else None
    return {
        "model": {"name": run.model_name, "parent": f"{parent.name}@{parent.version}" if parent else None,
                  "result": f"{result.name}@{result.version}" if result else None,
                  "task": run.spec["task"]},
        "progress": {"phase": run.phase, "epoch": run.epoch, "epochs": run.epochs_total, "step": run.step,
                     "steps_per_epoch": run.steps_per_epoch, "eta_seconds": run.eta_seconds,
                     "checkpoint_epoch": run.checkpoint_epoch, "resumed_from_epoch": run.resumed_from_epoch,
                     "attempts": run.attempts},
        "data": run.data_stats, "holdout_metrics": run.holdout_metrics, "comparison": run.comparison,
        "crawl_check": run.crawl_check, "sweep_id": run.sweep_id, "request": run.spec,
    }


def metrics_history(session: Session, job_id: str) -> list[dict]:
    rows = session.scalars(select(TrainMetric).where(TrainMetric.job_id == job_id).order_by(TrainMetric.epoch))
    return [{"epoch": m.epoch, **m.metrics, "seconds": round(m.seconds, 3)} for m in rows]


def epochs_json(session: Session, job: Job) -> dict:
    """GET /api/v1/jobs/<id>/epochs: a train job's metrics per finished epoch and its progress (as the job's own
    description gives it). InvalidRequest for a job of another kind."""
    if job.kind != JobKind.TRAIN:
        raise InvalidRequest(f"job {job.id} is a {job.kind} job; epochs belong to train jobs")
    return {"job_id": job.id, "status": job.status, "epochs": metrics_history(session, job.id),
            "progress": train_json(session, job, session.get(TrainRun, job.id))["progress"]}


def create_sweep(session: Session, sweep_id: str, sweep: SweepRequest, token_id: int | None = None) -> list[Job]:
    """Insert the sweep and one train job per grid point (each validated with the request), each recording the
    token, in the caller's transaction; the caller enqueues them after commit. All are compared on the same holdout
    (same model name, same salt)."""
    session.add(Sweep(id=sweep_id, base=sweep.base_spec(), grid=sweep.grid, token_id=token_id))
    session.flush()
    return [create_train_job(session, req, sweep_id=sweep_id, token_id=token_id) for req in sweep.train_requests()]


def sweep_json(session: Session, sweep_id: str) -> dict:
    sweep = get_or_404(session, Sweep, sweep_id, "sweep")
    rows = []
    for run, job in session.execute(select(TrainRun, Job).join(Job, Job.id == TrainRun.job_id)
                                    .where(TrainRun.sweep_id == sweep_id).order_by(Job.created_at)):
        point = {k: _get_path(run.spec, k) for k in sorted(sweep.grid)}
        version = session.get(ModelVersion, run.result_version_id) if run.result_version_id else None
        rows.append({"job_id": job.id, "status": job.status, "params": point,
                     "holdout_metrics": run.holdout_metrics,
                     "version": f"{version.name}@{version.version}" if version else None})
    return {"id": sweep.id, "grid": sweep.grid, "created_at": sweep.created_at.isoformat(), "runs": rows}


def sweeps_page(session: Session, *, limit: int, after: Key | None = None) -> tuple[list[str], Key | None]:
    """Sweep ids newest first (keyed by (created_at, id)), and the key of the last one when more follow."""
    rows, next_key = keyset.page(session, select(Sweep.id, Sweep.created_at), (Sweep.created_at, Sweep.id),
                                 after=after, limit=limit, descending=True, key_of=lambda row: (row[1], row[0]))
    return [row[0] for row in rows], next_key


def _get_path(spec: dict, dotted: str):
    node = spec
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node
