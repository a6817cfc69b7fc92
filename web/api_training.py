"""HTTP endpoints for sweeps and nightly schedules."""
from __future__ import annotations

import json
from datetime import datetime

from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.core.db import session_scope
from shared.core.names import Name
from shared.services import schedules, submission, train_jobs
from web.http import accepted, created, json_object, origin
from web.pagination import PageQuery, decode_cursor, page_body, parse_query

sweeps_bp = Blueprint("sweeps", __name__, url_prefix="/api/v1/sweeps")
schedules_bp = Blueprint("schedules", __name__, url_prefix="/api/v1/schedules")


MAX_SWEEP_BYTES = 256 * 1024  # a train request is under a kilobyte; each of up to 64 jobs stores a copy


class SweepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: dict
    grid: dict[str, list] = Field(max_length=32)  # setting paths; their points are counted before any is built

    @model_validator(mode="after")
    def _small(self):
        size = len(json.dumps({"base": self.base, "grid": self.grid}))
        if size > MAX_SWEEP_BYTES:
            raise ValueError(f"base and grid take {size} bytes as JSON; at most {MAX_SWEEP_BYTES}")
        return self


class ScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    name: Name
    cron: str = Field(min_length=1, max_length=100)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    model: Name
    train: dict
    gate: dict | None = None
    enabled: bool = True


class ScheduleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool


@sweeps_bp.post("")
def create_sweep():
    who, req = origin(), SweepRequest.model_validate(json_object())
    body, new = submission.submit_sweep(req.base, req.grid, origin=who,
                                        request_fingerprint=submission.fingerprint({"kind": "sweep",
                                                                                    **req.model_dump()}))
    return accepted(body, new, f"/api/v1/sweeps/{body['id']}")


@sweeps_bp.get("")
def list_sweeps():
    query = parse_query(PageQuery)
    with session_scope() as session:
        ids, next_key = train_jobs.sweeps_page(session, limit=query.limit,
                                               after=decode_cursor(query.after, datetime, str))
        return jsonify(page_body("sweeps", [train_jobs.sweep_json(session, i) for i in ids], next_key, query))


@sweeps_bp.get("/<sweep_id>")
def get_sweep(sweep_id: str):
    with session_scope() as session:
        return jsonify(train_jobs.sweep_json(session, sweep_id))


@schedules_bp.post("")
def create_schedule():
    req = ScheduleRequest.model_validate(json_object())
    with session_scope() as session:
        row = schedules.create_schedule(session, name=req.name, cron=req.cron, timezone_name=req.timezone,
                                               model_name=req.model, train=req.train, gate=req.gate,
                                               enabled=req.enabled)
        body = schedules.schedule_json(session, row)
    return created(body, f"/api/v1/schedules/{body['id']}")


@schedules_bp.get("")
def list_schedules():
    query = parse_query(PageQuery)
    with session_scope() as session:
        rows, next_key = schedules.schedules_page(session, limit=query.limit, after=decode_cursor(query.after, int))
        return jsonify(page_body("schedules", [schedules.schedule_json(session, row) for row in rows], next_key,
                                 query))


@schedules_bp.get("/<int:schedule_id>")
def get_schedule(schedule_id: int):
    with session_scope() as session:
        return jsonify(schedules.schedule_json(session, schedules.get_schedule(session, schedule_id)))


@schedules_bp.patch("/<int:schedule_id>")
def update_schedule(schedule_id: int):
    req = ScheduleUpdate.model_validate(json_object())
    with session_scope() as session:
        row = schedules.set_enabled(session, schedule_id, req.enabled)
        return jsonify(schedules.schedule_json(session, row))


@schedules_bp.delete("/<int:schedule_id>")
def delete_schedule(schedule_id: int):
    with session_scope() as session:
        schedules.delete_schedule(session, schedule_id)
    return "", 204
