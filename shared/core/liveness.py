"""When each maintenance loop (the sweeper) last completed: written by the loop, read by /readyz and /metrics."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.db import insert_ignoring_conflicts
from shared.core.tables import MaintenanceBeat, utcnow

SWEEPER = "sweeper"


def record_beat(session: Session, name: str, at: datetime, details: dict | None = None) -> None:
    """Upsert: two sweepers recording their first run at once both succeed; the later time is kept."""
    if insert_ignoring_conflicts(session, MaintenanceBeat.__table__,
                                 [{"name": name, "last_at": at, "details": details}], ["name"]):
        return
    row = session.get(MaintenanceBeat, name, with_for_update=True)
    if row.last_at < at:
        row.last_at, row.details = at, details


def last_beat(session: Session, name: str) -> datetime | None:
    row = session.get(MaintenanceBeat, name)
    return row.last_at if row is not None else None


def readiness(session: Session, settings: Settings, broker_ok: bool) -> dict:
    """What /readyz reports: the database answers (the caller's session works), the broker answers, and
    the sweeper ran within `sweep_max_age` seconds (beat and the maintenance worker are alive)."""
    last = last_beat(session, SWEEPER)
    age = None if last is None else (utcnow() - last).total_seconds()
    problems = []
    if not broker_ok:
        problems.append("the broker is unreachable")
    if age is None:
        problems.append("the sweeper has never run: start `imgq maintenance --beat`")
    elif age > settings.sweep_max_age:
        problems.append(f"the sweeper last ran {age:.0f} s ago (limit {settings.sweep_max_age:g} s): "
                        "is beat or the maintenance worker down?")
    return {"ready": not problems, "problems": problems, "database": "ok",
            "broker": "ok" if broker_ok else "unreachable", "sweeper_age_seconds": age}
