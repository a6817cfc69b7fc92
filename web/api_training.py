"""HTTP endpoints for sweeps and nightly schedules."""
from __future__ import annotations

from flask import Blueprint, jsonify

from shared.core.db import session_scope
from shared.schemas.training import ScheduleRequest, ScheduleUpdate, SweepRequest
from shared.services import schedules, submission, train_jobs
from web.http import created, json_object

sweeps_bp = Blueprint("sweeps", __name__, url_prefix="/api/v1/sweeps")
schedules_bp = Blueprint("schedules", __name__, url_prefix="/api/v1/schedules")


@sweeps_bp.post("")
def create_sweep():
    req = SweepRequest.model_validate(json_object())
    body = submission.submit_sweep(req)
    return created(body, f"/api/v1/sweeps/{body['id']}", 202)


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
    with session_scope() as session:
        return jsonify({"schedules": [schedules.schedule_json(session, row)
                                      for row in schedules.list_schedules(session)]})


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
