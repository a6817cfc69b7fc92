"""HTTP endpoints for jobs of every kind: submit score, embed and train jobs; list, describe and cancel jobs;
results, their items' thumbnails; a train job's epochs (and their deprecated old path)."""
from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from shared.core.db import session_scope
from shared.core.errors import InvalidRequest
from shared.schemas.jobs import EmbedRequest, EmbedUploadForm, ScoreRequest, ScoreUploadForm
from shared.schemas.training import TrainRequest
from shared.services import jobs, submission, thumbnails, train_jobs
from web.auth import caller
from web.http import accepted, form_fields, json_object, origin
from web.pagination import JobsQuery, ResultsQuery, decode_cursor, page_body, parse_query
from web.submit import submit_embed_json, submit_embed_upload, submit_json, submit_upload

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")


def _submit(upload, from_json):
    """multipart -> upload(files, form fields), JSON -> from_json(body): the 202 with the job."""
    if request.mimetype == "multipart/form-data":
        files = [f for name in request.files for f in request.files.getlist(name)]
        return accepted(*upload(files, form_fields()))
    if request.is_json:
        return accepted(*from_json(json_object()))
    raise InvalidRequest("send application/json or multipart/form-data")


@bp.post("/score")
def create_score_job():
    settings, who = current_app.config["IMGQ_SETTINGS"], origin()
    return _submit(lambda files, form: submit_upload(settings, files, ScoreUploadForm.model_validate(form), who),
                   lambda body: submit_json(settings, ScoreRequest.model_validate(body), who))


@bp.post("/embed")
def create_embed_job():
    """Vectors for a catalog's items, batched and retried as scoring; the job's `embedding` names their space."""
    settings, who = current_app.config["IMGQ_SETTINGS"], origin()
    return _submit(
        lambda files, form: submit_embed_upload(settings, files, EmbedUploadForm.model_validate(form), who),
        lambda body: submit_embed_json(settings, EmbedRequest.model_validate(body), who))


@bp.post("/train")
def create_train_job():
    who, body = origin(), json_object("a JSON object (a train request)")
    return accepted(*submission.submit_train(TrainRequest.model_validate(body), origin=who,
                                             request_fingerprint=submission.fingerprint(body)))


@bp.get("/<job_id>/epochs")
def get_epochs(job_id: str):
    """A train job's metrics per finished epoch (loss, val_loss, mae or accuracy, seconds) and its progress."""
    with session_scope() as session:
        return jsonify(train_jobs.epochs_json(session, jobs.get_job(session, job_id)))


@bp.get("/<job_id>/metrics")
def get_metrics(job_id: str):
    """The old path of /epochs, beside Prometheus' /metrics: the same answer, marked deprecated, for one release."""
    response = get_epochs(job_id)
    response.headers["Deprecation"] = "true"
    response.headers["Link"] = f'</api/v1/jobs/{job_id}/epochs>; rel="successor-version"'
    return response


@bp.get("")
def list_jobs():
    query = parse_query(JobsQuery)
    with session_scope() as session:
        rows, next_key = jobs.jobs_page(session, status=query.status, kind=query.kind, model=query.model,
                                        limit=query.limit, after=decode_cursor(query.after, datetime, str))
        return jsonify(page_body("jobs", [jobs.job_json(session, job) for job in rows], next_key, query))


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
    query = parse_query(ResultsQuery)
    if query.format == "csv":
        with session_scope() as session:
            jobs.get_job(session, job_id)  # 404 before streaming starts

        def generate():
            with session_scope() as session:
                yield from jobs.results_csv(session, jobs.get_job(session, job_id))

        return Response(stream_with_context(generate()), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'})
    with session_scope() as session:
        job = jobs.get_job(session, job_id)
        rows, next_key = jobs.results_page(session, job, after=decode_cursor(query.after, str), limit=query.limit,
                                           status=query.status)
    return jsonify(page_body("results", rows, next_key, query, job_id=job_id))


@bp.get("/<job_id>/items/<path:item_id>/thumbnail")
def get_item_thumbnail(job_id: str, item_id: str):
    """A small JPEG of an item's image (`size`: its longer edge, 64-512, default 160), read only from the data roots
    and this job's own uploads, cached (shared/services/thumbnails.py)."""
    size = request.args.get("size", "160")
    if not size.isdigit():
        raise InvalidRequest("size must be an integer", field="size")
    with session_scope() as session:
        data = thumbnails.job_item_thumbnail(session, current_app.config["IMGQ_SETTINGS"], job_id, item_id, int(size))
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
