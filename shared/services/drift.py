"""Output drift of score jobs: a trained version's reference distribution recorded, each finished score job's
output distribution and drift against its reference recorded once, and both described for the API and /metrics.

The reference of a job is its version's training reference (its outputs on its own validation and holdout images,
recorded by worker/training when it registers the version) or, for a version with none (an imported model), the
output distribution of the latest earlier score job of that version with one recorded. The statistics are
shared/models/drift.py's.

Invariants: a job's drift is computed only once it has succeeded, from its results read in pages by item id (short
transactions, bounded memory whatever the job's size), and written once (insert ignoring conflicts): two workers
that both see the job finish write one row, and only the one that wrote it logs the warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.core.db import insert_ignoring_conflicts, session_scope
from shared.core.states import JobKind, JobStatus
from shared.core.tables import DriftReference, Job, ModelVersion, Result, ScoreDrift, utcnow
from shared.models import drift as drift_stats

log = logging.getLogger(__name__)
PAGE_ROWS = 5000
TRAINING, PREVIOUS_JOB = "training", "previous_job"


@dataclass(frozen=True)
class Reference:
    kind: str  # TRAINING | PREVIOUS_JOB
    distribution: dict
    job_id: str | None = None  # PREVIOUS_JOB: the job whose outputs it is


def record_reference(session: Session, model_version_id: int, distribution: dict, kind: str = TRAINING) -> bool:
    """A version's reference distribution, written once; True if this call wrote it."""
    return bool(insert_ignoring_conflicts(session, DriftReference.__table__, [{
        "model_version_id": model_version_id, "kind": kind, "item_count": int(distribution.get("count", 0)),
        "distribution": distribution, "created_at": utcnow()}], ["model_version_id"]))


def reference_for(session: Session, model_version_id: int, job_id: str) -> Reference | None:
    """The version's training reference, else the distribution of its latest other score job with one."""
    trained = session.get(DriftReference, model_version_id)
    if trained is not None:
        return Reference(trained.kind, trained.distribution)
    previous = session.scalars(select(ScoreDrift).where(ScoreDrift.model_version_id == model_version_id,
                                                        ScoreDrift.job_id != job_id, ScoreDrift.item_count > 0)
                               .order_by(ScoreDrift.computed_at.desc()).limit(1)).first()
    return Reference(PREVIOUS_JOB, previous.distribution, previous.job_id) if previous is not None else None


def _pending(job_id: str) -> tuple[str, Reference | None] | None:
    """(the version's task, the reference) when the job is a succeeded score job without a drift row yet."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if (job is None or job.kind != JobKind.SCORE or job.status != JobStatus.SUCCEEDED
                or job.model_version_id is None or session.get(ScoreDrift, job_id) is not None):
            return None
        version = session.get(ModelVersion, job.model_version_id)
        return version.task, reference_for(session, version.id, job_id)


def summarize_results(job_id: str, task: str, reference: Reference | None,
                      page_rows: int = PAGE_ROWS) -> drift_stats.StreamingSummary:
    """The job's successful outputs, read a page at a time in item-id order, summarized in bounded memory."""
    summary = drift_stats.StreamingSummary(task, reference.distribution if reference else None)
    after = None
    while True:
        with session_scope() as session:
            query = select(Result.item_id, Result.outputs).where(Result.job_id == job_id, Result.status == "ok")
            if after is not None:
                query = query.where(Result.item_id > after)
            page = session.execute(query.order_by(Result.item_id).limit(page_rows)).all()
        if not page:
            return summary
        summary.add([outputs for _, outputs in page if outputs])
        after = page[-1][0]


def record_job_drift(job_id: str, threshold: float, page_rows: int = PAGE_ROWS) -> dict | None:
    """Once a score job has succeeded: its output distribution and drift recorded (once), a warning logged when
    the drift passes `threshold`. Returns the job's drift as drift_json says, or None when there is nothing to do."""
    pending = _pending(job_id)
    if pending is None:
        return None
    task, reference = pending
    summary = summarize_results(job_id, task, reference, page_rows)
    measured = drift_stats.drift(reference.distribution, summary) if reference else \
        {"statistic": "psi", "value": None, "outputs": {}}
    value = measured["value"]
    row = {"job_id": job_id, "reference_kind": reference.kind if reference else None,
           "reference_job_id": reference.job_id if reference else None, "statistic": measured["statistic"],
           "value": value, "threshold": threshold, "exceeded": value is not None and value > threshold,
           "item_count": summary.count, "distribution": summary.summary(), "detail": measured["outputs"],
           "computed_at": utcnow()}
    with session_scope() as session:
        row["model_version_id"] = session.get(Job, job_id).model_version_id
        wrote = insert_ignoring_conflicts(session, ScoreDrift.__table__, [row], ["job_id"])
    if wrote and row["exceeded"]:
        log.warning("job %s: output drift %s %.3f against the %s reference is above the threshold %.3f",
                    job_id, row["statistic"], value, row["reference_kind"], threshold)
    elif wrote:
        log.info("job %s: output drift %s %s against the %s reference", job_id, row["statistic"], value,
                 row["reference_kind"])
    return drift_json(ScoreDrift(**row))


def drift_json(row: ScoreDrift) -> dict:
    return {"reference": row.reference_kind, "reference_job_id": row.reference_job_id, "statistic": row.statistic,
            "value": row.value, "threshold": row.threshold, "exceeded": bool(row.exceeded),
            "items": row.item_count, "distribution": row.distribution, "outputs": row.detail,
            "computed_at": row.computed_at.isoformat() if row.computed_at else None}


def job_drift(session: Session, job_id: str) -> dict | None:
    """The score job's drift for its JSON (None: not computed yet, or not a finished score job)."""
    row = session.get(ScoreDrift, job_id)
    return drift_json(row) if row is not None else None


def latest_by_model(session: Session) -> list[tuple[str, float]]:
    """(model name, the drift of its latest score job with a figure), for the /metrics gauge."""
    latest = (select(ModelVersion.name.label("name"), func.max(ScoreDrift.computed_at).label("at"))
              .join(ModelVersion, ModelVersion.id == ScoreDrift.model_version_id)
              .where(ScoreDrift.value.is_not(None)).group_by(ModelVersion.name).subquery())
    rows = session.execute(
        select(latest.c.name, ScoreDrift.value)
        .join(ModelVersion, ModelVersion.name == latest.c.name)
        .join(ScoreDrift, (ScoreDrift.model_version_id == ModelVersion.id) & (ScoreDrift.computed_at == latest.c.at))
        .where(ScoreDrift.value.is_not(None))).all()
    return sorted({name: float(value) for name, value in rows}.items())
