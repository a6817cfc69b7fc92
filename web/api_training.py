"""HTTP endpoints for sweeps and nightly schedules."""
from __future__ import annotations

from datetime import datetime

from flask import Blueprint, jsonify

from shared.core.db import session_scope
from shared.schemas.training import ScheduleRequest, ScheduleUpdate, SweepRequest
from shared.services import schedules, submission, train_jobs
from web.http import accepted, created, json_object, origin
from web.pagination import PageQuery, decode_cursor, page_body, parse_query

sweeps_bp = Blueprint("sweeps", __name__, url_prefix="/api/v1/sweeps")
schedules_bp = Blueprint("schedules", __name__, url_prefix="/api/v1/schedules")


@sweeps_bp.post("")
def create_sweep():
    who, req = origin(), SweepRequest.model_validate(json_object())
    body, new = submission.submit_sweep(req, origin=who, request_fingerprint=submission.fingerprint(
        {"kind": "sweep", **req.model_dump(mode="json")}))
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
                                               model_name=req.model, train=req.train_template(),
                                               gate=req.gate.model_dump(mode="json") if req.gate else None,
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
