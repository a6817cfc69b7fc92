"""HTTP endpoints for jobs of every kind: submit score, embed and train jobs; list, describe and cancel jobs;
results."""
from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from shared.core.db import session_scope
from shared.core.errors import InvalidRequest
from shared.core.states import JobKind
from shared.schemas.jobs import EmbedRequest, EmbedUploadForm, ScoreRequest, ScoreUploadForm
from shared.schemas.training import TrainRequest
from shared.services import jobs, submission, train_jobs
from web.auth import caller
from web.http import created as created_response
from web.http import form_fields, json_object, refuse_nul
from web.submit import submit_embed_json, submit_embed_upload, submit_json, submit_upload

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", field=name) from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}", field=name)
    return value


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > 200:
        raise InvalidRequest("Idempotency-Key must be at most 200 characters", field="Idempotency-Key")
    refuse_nul(key, "Idempotency-Key")
    return key


def _submit(upload, from_json):
    """multipart -> upload(files, form fields), JSON -> from_json(body): the 202 with the job."""
    if request.mimetype == "multipart/form-data":
        files = [f for name in request.files for f in request.files.getlist(name)]
        return _accepted(*upload(files, form_fields()))
    if request.is_json:
        return _accepted(*from_json(json_object()))
    raise InvalidRequest("send application/json or multipart/form-data")


@bp.post("/score")
def create_score_job():
    settings, key, token_id = current_app.config["IMGQ_SETTINGS"], _idempotency_key(), caller().token_id
    return _submit(
        lambda files, form: submit_upload(settings, files, ScoreUploadForm.model_validate(form), key, token_id),
        lambda body: submit_json(settings, ScoreRequest.model_validate(body), key, token_id))


@bp.post("/embed")
def create_embed_job():
    """Vectors for a catalog's items, batched and retried as scoring; the job's `embedding` names their space."""
    settings, key, token_id = current_app.config["IMGQ_SETTINGS"], _idempotency_key(), caller().token_id
    return _submit(
        lambda files, form: submit_embed_upload(settings, files, EmbedUploadForm.model_validate(form), key, token_id),
        lambda body: submit_embed_json(settings, EmbedRequest.model_validate(body), key, token_id))


def _accepted(description: dict, created: bool):
    """202 with the job and its Location; a repeated Idempotency-Key says it is a replay."""
    replay = {} if created else {"Idempotent-Replayed": "true"}
    return created_response(description, description["links"]["self"], 202, **replay)


@bp.post("/train")
def create_train_job():
    body = json_object("a JSON object (a train request)")
    key = _idempotency_key()
    settings = current_app.config["IMGQ_SETTINGS"]
    return _accepted(*submission.submit_train(TrainRequest.model_validate(body), idempotency_key=key,
                                              request_fingerprint=submission.fingerprint(body),
                                              token_id=caller().token_id, max_active_jobs=settings.max_active_jobs))


@bp.get("/<job_id>/metrics")
def get_metrics(job_id: str):
    with session_scope() as session:
        job = jobs.get_job(session, job_id)
        if job.kind != JobKind.TRAIN:
            raise InvalidRequest(f"job {job_id} is a {job.kind} job; metrics belong to train jobs")
        return jsonify({"job_id": job_id, "status": job.status, "epochs": train_jobs.metrics_history(session, job_id),
                        "progress": jobs.job_json(session, job)["progress"]})


@bp.get("")
def list_jobs():
    with session_scope() as session:
        rows = jobs.list_jobs(session, status=request.args.get("status"), model=request.args.get("model"),
                              kind=request.args.get("kind"), limit=_int_arg("limit", 50, 1, 500),
                              before=request.args.get("before"))
        return jsonify({"jobs": [jobs.job_json(session, j) for j in rows],
                        "next_before": rows[-1].id if rows else None})


@bp.get("/<job_id>")
def get_job(job_id: str):
    with session_scope() as session:
        return jsonify(jobs.job_json(session, jobs.get_job(session, job_id)))


@bp.post("/<job_id>/cancel")
def cancel_job(job_id: str):
    with session_scope() as session:
        job = jobs.cancel_job(session, job_id, caller())
        session.flush()
        return jsonify(jobs.job_json(session, job))


@bp.get("/<job_id>/results")
def get_results(job_id: str):
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format must be json or csv", field="format")
    if fmt == "csv":
        with session_scope() as session:
            jobs.get_job(session, job_id)  # 404 before streaming starts

        def generate():
            with session_scope() as session:
                yield from jobs.results_csv(session, jobs.get_job(session, job_id))

        return Response(stream_with_context(generate()), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'})
    status = request.args.get("status")
    if status not in (None, "ok", "error"):
        raise InvalidRequest("status must be ok or error", field="status")
    limit = _int_arg("limit", 100, 1, 1000)
    after = request.args.get("after")
    with session_scope() as session:
        job = jobs.get_job(session, job_id)
        rows, next_after = jobs.results_page(session, job, after=after, limit=limit, status=status)
    body = {"job_id": job_id, "results": rows, "next_after": next_after, "next": None}
    if next_after is not None:
        query = {"limit": limit, "after": next_after, **({"status": status} if status else {})}
        body["next"] = f"/api/v1/jobs/{job_id}/results?{urlencode(query)}"
    return jsonify(body)
