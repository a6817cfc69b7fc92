"""Per-token caps checked when a job is created (the rate of requests is limited in web/rate_limits.py)."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.core.errors import TooManyRequests
from shared.core.states import ACTIVE_JOB_STATUSES
from shared.core.tables import Job


def check_active_jobs(session: Session, token_id: int | None, limit: int | None, adding: int = 1) -> None:
    """TooManyRequests when the token already has `limit` jobs preparing, queued or running (no cap without a token)."""
    if token_id is None or limit is None:
        return
    active = session.scalar(select(func.count()).select_from(Job).where(
        Job.token_id == token_id, Job.status.in_(ACTIVE_JOB_STATUSES)))
    if active + adding > limit:
        raise TooManyRequests(f"this token has {active} jobs preparing, queued or running, its limit is {limit}; "
                              "wait for some to finish", retry_after=30, active=active, limit=limit)
