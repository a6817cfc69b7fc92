"""Nightly fine-tunes: schedules in the database, driven by Celery beat through `dispatch_due`.

Each slot (a time the cron expression names, in the schedule's time zone) becomes one row of
schedule_runs, unique per (schedule, slot): two beat processes, a restart, or a retry can try the
same slot, and only one insert wins. When slots were missed (beat was down), only the latest one
runs: a missed night is caught up once, not many times.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import partial
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.core import keyset, names
from shared.core.db import get_or_404, session_scope
from shared.core.errors import Conflict, ImgqError, InvalidRequest
from shared.core.keyset import Key
from shared.core.tables import MAX_INT32, Job, Schedule, ScheduleRun, TrainRun, utcnow
from shared.schemas.training import Gate, ScheduleTrain, TrainRequest
from shared.services.submission import commit_and_send
from shared.services.train_jobs import create_train_job


def validate_timing(cron: str, tz: str) -> None:
    if not croniter.is_valid(cron):
        raise InvalidRequest(f"not a valid cron expression: {cron!r}", field="cron")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(f"unknown time zone {tz!r}", field="timezone") from None


def _aware(t: datetime) -> datetime:
    """A caller's `now`: naive means UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def latest_slot(cron: str, tz: str, now: datetime) -> datetime:
    """The last time at or before `now` that the cron expression names, in UTC."""
    local_now = _aware(now).astimezone(ZoneInfo(tz)) + timedelta(seconds=1)  # "at or before"
    return croniter(cron, local_now).get_prev(datetime).astimezone(timezone.utc)


def next_slot(cron: str, tz: str, now: datetime) -> datetime:
    return croniter(cron, _aware(now).astimezone(ZoneInfo(tz))).get_next(datetime).astimezone(timezone.utc)


def render_request(schedule: Schedule, slot: datetime, previous: datetime | None) -> TrainRequest:
    """The schedule's train settings for one slot: {date} / {previous_date} in the dataset path are
    the slot's local date (and the previous slot's), e.g. "crawl/{date:%Y-%m-%d}/items.csv"; with
    "added_since_last_run", only manifests written since the previous slot are read."""
    spec = copy.deepcopy(schedule.train)
    local = slot.astimezone(ZoneInfo(schedule.timezone))
    prev_local = (previous or slot).astimezone(ZoneInfo(schedule.timezone))
    spec["model"] = schedule.model_name
    spec["dataset"]["path"] = spec["dataset"]["path"].format(date=local, previous_date=prev_local)
    if spec["dataset"].get("added_since_last_run") and previous is not None:
        spec["dataset"]["added_since"] = previous.isoformat()
    spec.setdefault("gate", schedule.gate)
    return TrainRequest.model_validate(spec)


def validate_schedule_train(train: dict, model_name: str) -> None:
    """A schedule's train template, as shared/schemas/training.ScheduleTrain checks it (its dataset path a pattern
    of {date:...} and {previous_date:...} only)."""
    ScheduleTrain.model_validate({**train, "model": model_name})


def create_schedule(session: Session, *, name: str, cron: str, timezone_name: str, model_name: str, train: dict,
                    gate: dict | None, enabled: bool = True) -> Schedule:
    names.check_name(name, "name")
    names.check_name(model_name, "model")
    validate_timing(cron, timezone_name)
    validate_schedule_train(train, model_name)
    gate = Gate.model_validate(gate or {}).model_dump()
    if session.scalar(select(Schedule.id).where(Schedule.name == name)) is not None:
        raise Conflict(f"a schedule named {name!r} exists", field="name")
    row = Schedule(name=name, cron=cron, timezone=timezone_name, model_name=model_name, train=train, gate=gate,
                   enabled=enabled)
    session.add(row)
    session.flush()
    return row


def get_schedule(session: Session, schedule_id: int) -> Schedule:
    if not 1 <= schedule_id <= MAX_INT32:
        raise InvalidRequest(f"schedule id must be from 1 to {MAX_INT32}", field="schedule_id")
    return get_or_404(session, Schedule, schedule_id, "schedule")


def list_schedules(session: Session, *, enabled_only: bool = False) -> list[Schedule]:
    query = select(Schedule).order_by(Schedule.id)
    return list(session.scalars(query.where(Schedule.enabled.is_(True)) if enabled_only else query))


def schedules_page(session: Session, *, limit: int, after: Key | None = None) -> tuple[list[Schedule], Key | None]:
    """Schedules by id (keyed by it), and the key of the last one when more follow."""
    rows, next_key = keyset.page(session, select(Schedule), (Schedule.id,), after=after, limit=limit,
                                 key_of=lambda row: (row[0].id,))
    return [row[0] for row in rows], next_key


def set_enabled(session: Session, schedule_id: int, enabled: bool) -> Schedule:
    row = get_schedule(session, schedule_id)
    row.enabled = enabled
    return row


def delete_schedule(session: Session, schedule_id: int) -> None:
    session.delete(get_schedule(session, schedule_id))


def schedule_json(session: Session, row: Schedule, now: datetime | None = None) -> dict:
    runs = list(session.scalars(select(ScheduleRun).where(ScheduleRun.schedule_id == row.id)
                                .order_by(ScheduleRun.slot_at.desc()).limit(20)))
    job_ids = [r.job_id for r in runs if r.job_id]
    checks = dict(session.execute(select(TrainRun.job_id, TrainRun.crawl_check)
                                  .where(TrainRun.job_id.in_(job_ids))).tuples().all()) if job_ids else {}
    return {"id": row.id, "name": row.name, "cron": row.cron, "timezone": row.timezone, "model": row.model_name,
            "enabled": row.enabled, "train": row.train, "gate": row.gate,
            "next_slot": next_slot(row.cron, row.timezone, now or utcnow()).isoformat(),
            "runs": [{"slot": r.slot_at.isoformat(), "job_id": r.job_id, "decision": r.decision,
                      "reason": r.reason, "crawl_check": checks.get(r.job_id)} for r in runs]}


def dispatch_due(enqueue_train: Callable[[list[str]], int], now: datetime | None = None) -> dict:
    """Create the train job of every schedule whose latest slot has not run yet, each slot in a transaction of
    its own, and send it once committed (shared.services.submission.commit_and_send)."""
    now = now or utcnow()
    created = sent = 0
    with session_scope() as session:
        due = list_schedules(session, enabled_only=True)
    for sched in due:
        slot = latest_slot(sched.cron, sched.timezone, now)
        if slot < sched.created_at.replace(microsecond=0):
            continue  # the schedule did not exist yet at that slot
        try:
            job_ids, n_sent = commit_and_send(partial(_take_slot, schedule=sched, slot=slot), enqueue_train)
        except IntegrityError:
            continue  # another beat took this slot
        created, sent = created + len(job_ids), sent + n_sent
    return {"created": created, "sent": sent}


def _take_slot(session: Session, *, schedule: Schedule, slot: datetime) -> list[Job]:
    """The slot's schedule_runs row and its train job, in the caller's transaction. [] when this slot (or a later
    one) ran already, or when the slot's request cannot train: its run row then records why."""
    previous = session.scalar(select(func.max(ScheduleRun.slot_at)).where(ScheduleRun.schedule_id == schedule.id))
    if previous is not None and previous >= slot:
        return []
    run = ScheduleRun(schedule_id=schedule.id, slot_at=slot)
    session.add(run)
    session.flush()  # the unique (schedule, slot) row: the one place a slot is taken
    try:
        with session.begin_nested():
            job = create_train_job(session, render_request(schedule, slot, previous), schedule_run_id=run.id)
    except (ImgqError, ValueError) as exc:
        run.decision, run.reason = "failed", getattr(exc, "message", None) or str(exc)
        return []
    run.job_id = job.id
    return [job]
