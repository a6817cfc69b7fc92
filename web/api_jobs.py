"""HTTP endpoints for jobs of every kind: submit score, embed and train jobs; list, describe and cancel jobs;
results, their items' thumbnails; a train job's epochs (and their deprecated old path)."""
from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, current_app, request, stream_with_context

from shared.core.db import session_scope
from shared.core.errors import InvalidRequest
from shared.schemas.catalogs import ThumbnailQuery
from shared.schemas.jobs import EmbedRequest, EmbedUploadForm, ScoreRequest, ScoreUploadForm
from shared.schemas.responses.jobs import Epochs, Job, JobsPage, ResultsPage
from shared.schemas.training import TrainRequest
from shared.services import jobs, result_exports, submission, thumbnails, train_jobs
from web.auth import caller
from web.http import accepted, form_fields, json_object, origin, respond
from web.openapi import PARQUET, TEXT, Form, Link, documented
from web.pagination import JobsQuery, ResultsQuery, decode_cursor, page_body, parse_query
from web.submit import submit_embed_json, submit_embed_upload, submit_json, submit_upload

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")

JOB_LINKS = {"GetJob": Link("jobs.get_job", {"job_id": "$response.body#/id"}),
             "CancelJob": Link("jobs.cancel_job", {"job_id": "$response.body#/id"})}
ITEM_JOB_LINKS = {**JOB_LINKS, "GetResults": Link("jobs.get_results", {"job_id": "$response.body#/id"})}
UPLOADED = "the images, one part each; an item's id is its file name (unique within the upload)"


def _submit(upload, from_json):
    """multipart -> upload(files, form fields), JSON -> from_json(body): the 202 with the job."""
    if request.mimetype == "multipart/form-data":
        files = [f for name in request.files for f in request.files.getlist(name)]
        return accepted(Job, *upload(files, form_fields()))
    if request.is_json:
        return accepted(Job, *from_json(json_object()))
    raise InvalidRequest("send application/json or multipart/form-data")


@bp.post("/score")
@documented("Score images with a model", body=ScoreRequest, form=Form(ScoreUploadForm, {"files": UPLOADED},
                                                                       many=frozenset({"files"})),
            responses={202: Job}, errors=(404, 409), submits=True, links={202: ITEM_JOB_LINKS},
            description="Items by path (relative to a data root), a manifest (CSV or Parquet) on the data roots, an "
                        "upload sent in parts (409 once a job took it), or uploaded files (multipart). Answers the "
                        "queued job; follow its `links`. A manifest over IMGQ_INLINE_MANIFEST_BYTES is checked (its "
                        "columns, its first rows) and answered at once with the job `preparing` while a worker reads "
                        "it (`progress.rows_read`); a bad row found later fails the job with the same reason. With "
                        "`export` (JSON only), the results are also written to that s3:// URI under "
                        "IMGQ_EXPORT_ROOTS when the job succeeds (Parquet or CSV by its extension, `{job_id}` filled "
                        "in); the job's `export` says how that went.")
def create_score_job():
    settings, who = current_app.config["IMGQ_SETTINGS"], origin()
    return _submit(lambda files, form: submit_upload(settings, files, ScoreUploadForm.model_validate(form), who),
                   lambda body: submit_json(settings, ScoreRequest.model_validate(body), who))


@bp.post("/embed")
@documented("Embed a catalog's images", body=EmbedRequest, form=Form(EmbedUploadForm, {"files": UPLOADED},
                                                                       many=frozenset({"files"})),
            responses={202: Job}, errors=(404, 409), submits=True, links={202: ITEM_JOB_LINKS})
def create_embed_job():
    """Vectors for a catalog's items, batched and retried as scoring; the job's `embedding` names their space. A large
    manifest is answered `preparing`, as for scoring."""
    settings, who = current_app.config["IMGQ_SETTINGS"], origin()
    return _submit(
        lambda files, form: submit_embed_upload(settings, files, EmbedUploadForm.model_validate(form), who),
        lambda body: submit_embed_json(settings, EmbedRequest.model_validate(body), who))


@bp.post("/train")
@documented("Train a model", body=TrainRequest, responses={202: Job}, errors=(404,), submits=True,
            links={202: {**JOB_LINKS, "GetEpochs": Link("jobs.get_epochs", {"job_id": "$response.body#/id"})}},
            description="Fine-tune a version or train an architecture on a dataset; with a `gate`, the new version "
                        "is promoted to production only if it beats it on the same holdout.")
def create_train_job():
    who, body = origin(), json_object("a JSON object (a train request)")
    return accepted(Job, *submission.submit_train(TrainRequest.model_validate(body), origin=who,
                                             request_fingerprint=submission.fingerprint(body)))


@bp.get("/<job_id>/epochs")
@documented("A train job's metrics per epoch", responses={200: Epochs})
def get_epochs(job_id: str):
    """A train job's metrics per finished epoch (loss, val_loss, mae or accuracy, seconds) and its progress; a job
    of another kind is a 400."""
    with session_scope() as session:
        return respond(Epochs, train_jobs.epochs_json(session, jobs.get_job(session, job_id)))


@bp.get("/<job_id>/metrics")
@documented("A train job's metrics per epoch (deprecated path)", responses={200: Epochs}, deprecated=True,
            headers={200: {"Deprecation": "true", "Link": "the successor: </api/v1/jobs/<id>/epochs>; "
                                                          'rel="successor-version"'}})
def get_metrics(job_id: str):
    """The old path of /epochs, beside Prometheus' /metrics: the same answer, marked deprecated, for one release."""
    response = get_epochs(job_id)
    response.headers["Deprecation"] = "true"
    response.headers["Link"] = f'</api/v1/jobs/{job_id}/epochs>; rel="successor-version"'
    return response


@bp.get("")
@documented("List jobs, newest first", query=JobsQuery, responses={200: JobsPage})
def list_jobs():
    query = parse_query(JobsQuery)
    with session_scope() as session:
        rows, next_key = jobs.jobs_page(session, status=query.status, kind=query.kind, model=query.model,
                                        limit=query.limit, after=decode_cursor(query.after, datetime, str))
        return respond(JobsPage, page_body("jobs", [jobs.job_json(session, job) for job in rows], next_key, query))


@bp.get("/<job_id>")
@documented("A job: status, progress, ETA, heartbeat", responses={200: Job})
def get_job(job_id: str):
    with session_scope() as session:
        return respond(Job, jobs.job_json(session, jobs.get_job(session, job_id)))


@bp.post("/<job_id>/cancel")
@documented("Cancel a job", responses={200: Job},
            description="Remaining chunks are not started (a chunk in flight finishes and its results are kept); a "
                        "training stops at its next batch. Only the token that created the job, or an admin, may "
                        "cancel it (else 403). A finished job is answered as it is.")
def cancel_job(job_id: str):
    with session_scope() as session:
        job = jobs.cancel_job(session, job_id, caller())
        session.flush()
        return respond(Job, jobs.job_json(session, job))


@bp.get("/<job_id>/results")
@documented("A job's results, by item id", query=ResultsQuery,
            responses={200: {"application/json": ResultsPage, "text/csv": TEXT,
                             result_exports.MEDIA_TYPE: PARQUET}},
            description="Pages of JSON, or with format=csv or format=parquet every result streamed as one file (id, "
                        "status, error, from_cache and the model's output columns; limit, after and status then do "
                        "not apply). Parquet comes a row group per 10,000 results; outputs are doubles but for "
                        "`label` and `category` (text) and `dim` (an integer).")
def get_results(job_id: str):
    query = parse_query(ResultsQuery)
    if query.format != "json":
        with session_scope() as session:
            jobs.get_job(session, job_id)  # 404 before streaming starts
        return Response(stream_with_context(_download(job_id, query.format)),
                        mimetype="text/csv" if query.format == "csv" else result_exports.MEDIA_TYPE,
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.{query.format}"'})
    with session_scope() as session:
        job = jobs.get_job(session, job_id)
        rows, next_key = jobs.results_page(session, job, after=decode_cursor(query.after, str), limit=query.limit,
                                           status=query.status)
    return respond(ResultsPage, page_body("results", rows, next_key, query, job_id=job_id))


def _download(job_id: str, format: str):
    if format == "parquet":
        yield from result_exports.results_parquet(job_id)
        return
    with session_scope() as session:
        yield from jobs.results_csv(session, jobs.get_job(session, job_id))


@bp.get("/<job_id>/items/<path:item_id>/thumbnail")
@documented("A small JPEG of an item's image, read only from the data roots and this job's own uploads, cached",
            query=ThumbnailQuery,
            responses={200: {"image/jpeg": {"type": "string", "contentMediaType": "image/jpeg"}}})
def get_item_thumbnail(job_id: str, item_id: str):
    query = parse_query(ThumbnailQuery)
    with session_scope() as session:
        data = thumbnails.job_item_thumbnail(session, current_app.config["IMGQ_SETTINGS"], job_id, item_id,
                                             query.size)
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
