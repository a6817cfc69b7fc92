"""HTTP endpoints for sweeps and nightly schedules."""
from __future__ import annotations

from datetime import datetime

from flask import Blueprint

from shared.core.db import session_scope
from shared.schemas.responses.training import Schedule, SchedulesPage, Sweep, SweepsPage
from shared.schemas.training import ScheduleRequest, ScheduleUpdate, SweepRequest
from shared.services import schedules, submission, train_jobs
from web.http import accepted, created, json_object, origin, respond
from web.openapi import Link, documented
from web.pagination import PageQuery, decode_cursor, page_body, parse_query

sweeps_bp = Blueprint("sweeps", __name__, url_prefix="/api/v1/sweeps")
schedules_bp = Blueprint("schedules", __name__, url_prefix="/api/v1/schedules")

SCHEDULE_LINKS = {name: Link(f"schedules.{operation}", {"schedule_id": "$response.body#/id"}) for name, operation in
                  (("GetSchedule", "get_schedule"), ("UpdateSchedule", "update_schedule"),
                   ("DeleteSchedule", "delete_schedule"))}


@sweeps_bp.post("")
@documented("Train one job per point of a grid", body=SweepRequest, responses={202: Sweep}, errors=(404,),
            submits=True, links={202: {"GetSweep": Link("sweeps.get_sweep", {"sweep_id": "$response.body#/id"})}},
            description="Every job is compared on the same holdout; the sweep lists them in `runs`.")
def create_sweep():
    who, req = origin(), SweepRequest.model_validate(json_object())
    body, new = submission.submit_sweep(req, origin=who, request_fingerprint=submission.fingerprint(
        {"kind": "sweep", **req.model_dump(mode="json")}))
    return accepted(Sweep, body, new, f"/api/v1/sweeps/{body['id']}")


@sweeps_bp.get("")
@documented("List sweeps, newest first", query=PageQuery, responses={200: SweepsPage})
def list_sweeps():
    query = parse_query(PageQuery)
    with session_scope() as session:
        ids, next_key = train_jobs.sweeps_page(session, limit=query.limit,
                                               after=decode_cursor(query.after, datetime, str))
        return respond(SweepsPage, page_body("sweeps", [train_jobs.sweep_json(session, i) for i in ids], next_key,
                                             query))


@sweeps_bp.get("/<sweep_id>")
@documented("A sweep and its jobs", responses={200: Sweep})
def get_sweep(sweep_id: str):
    with session_scope() as session:
        return respond(Sweep, train_jobs.sweep_json(session, sweep_id))


@schedules_bp.post("")
@documented("Create a nightly training schedule", body=ScheduleRequest, responses={201: Schedule}, errors=(409,),
            links={201: SCHEDULE_LINKS})
def create_schedule():
    req = ScheduleRequest.model_validate(json_object())
    with session_scope() as session:
        row = schedules.create_schedule(session, name=req.name, cron=req.cron, timezone_name=req.timezone,
                                               model_name=req.model, train=req.train_template(),
                                               gate=req.gate.model_dump(mode="json") if req.gate else None,
                                               enabled=req.enabled)
        body = schedules.schedule_json(session, row)
    return created(Schedule, body, f"/api/v1/schedules/{body['id']}")


@schedules_bp.get("")
@documented("List schedules", query=PageQuery, responses={200: SchedulesPage})
def list_schedules():
    query = parse_query(PageQuery)
    with session_scope() as session:
        rows, next_key = schedules.schedules_page(session, limit=query.limit, after=decode_cursor(query.after, int))
        return respond(SchedulesPage, page_body("schedules", [schedules.schedule_json(session, row) for row in rows],
                                                next_key, query))


@schedules_bp.get("/<int:schedule_id>")
@documented("A schedule and its latest slots", responses={200: Schedule})
def get_schedule(schedule_id: int):
    with session_scope() as session:
        return respond(Schedule, schedules.schedule_json(session, schedules.get_schedule(session, schedule_id)))


@schedules_bp.patch("/<int:schedule_id>")
@documented("Enable or disable a schedule", body=ScheduleUpdate, responses={200: Schedule})
def update_schedule(schedule_id: int):
    req = ScheduleUpdate.model_validate(json_object())
    with session_scope() as session:
        row = schedules.set_enabled(session, schedule_id, req.enabled)
        return respond(Schedule, schedules.schedule_json(session, row))


@schedules_bp.delete("/<int:schedule_id>")
@documented("Delete a schedule", responses={204: None})
def delete_schedule(schedule_id: int):
    with session_scope() as session:
        schedules.delete_schedule(session, schedule_id)
    return "", 204
