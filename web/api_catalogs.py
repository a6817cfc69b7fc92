"""HTTP endpoints for catalogs and similar-image search: catalogs and their indexes, index jobs, deleting items,
thumbnails, and queries (one, or a batch in one request)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from shared.core.db import session_scope
from shared.core.errors import InvalidRequest, RequestEntityTooLarge
from shared.core.names import Name, check_name
from shared.schemas.catalogs import DeletionRequest, IndexRequest, SimilarBatch, SimilarQuery, ThumbnailQuery
from shared.schemas.responses.catalogs import Catalog, CatalogsPage, DeletionReport, SimilarAnswer, SimilarAnswers
from shared.schemas.responses.jobs import Job
from shared.services import catalogs, similar, submission
from web.http import accepted, form_fields, json_object, origin, respond
from web.openapi import Form, Link, documented
from web.pagination import PageQuery, decode_cursor, page_body, parse_query

bp = Blueprint("catalogs", __name__, url_prefix="/api/v1")

MAX_QUERY_IMAGE_BYTES = 10 * 1024 * 1024  # an uploaded query image travels to the worker inside its message
QUERY_UPLOAD = Form(SimilarQuery, {"image": f"the query image (at most {MAX_QUERY_IMAGE_BYTES} bytes)"},
                    leave_out=frozenset({"image_base64", "item_id", "image_uri"}))
NEEDS_WORKER = ("A query by image (an upload, `image_uri`, or with `category_from`) is embedded by a worker of the "
                "queries queue: 503 when none answers within IMGQ_QUERY_TIMEOUT. A query by `item_id` is answered "
                "by the web front alone.")


@bp.get("/catalogs")
@documented("List catalogs by name", query=PageQuery, responses={200: CatalogsPage})
def list_catalogs():
    query = parse_query(PageQuery)
    with session_scope() as session:
        rows, next_key = catalogs.catalogs_page(session, limit=query.limit, after=decode_cursor(query.after, str))
    return respond(CatalogsPage, page_body("catalogs", rows, next_key, query))


@bp.get("/catalogs/<catalog>")
@documented("A catalog: its spaces and latest indexes", path={"catalog": Name}, responses={200: Catalog})
def get_catalog(catalog: str):
    with session_scope() as session:
        return respond(Catalog, catalogs.catalog_json(session, catalog))


@bp.post("/catalogs/<catalog>/indexes")
@documented("Build or extend a catalog's index", path={"catalog": Name}, body=IndexRequest, body_required=False,
            responses={202: Job}, errors=(409,), submits=True,
            links={202: {"GetJob": Link("jobs.get_job", {"job_id": "$response.body#/id"})}})
def create_index_job(catalog: str):
    """shared/schemas/catalogs.IndexRequest (an empty body is a build) -> 202 with the index job."""
    check_name(catalog, "catalog")
    who = origin()
    req = IndexRequest.model_validate(json_object("a JSON object (an index request)") if request.content_length else {})
    params = req.build_params(current_app.config["IMGQ_SETTINGS"].exact_index_below)
    fingerprint = submission.fingerprint({"kind": "index", "catalog": catalog, "space": req.space, "mode": req.mode,
                                          "params": params.model_dump() if params is not None else None})
    return accepted(Job, *submission.submit_index(catalog=catalog, space=req.space, mode=req.mode, params=params,
                                             origin=who, request_fingerprint=fingerprint))


@bp.post("/catalogs/<catalog>/deletions")
@documented("Delete items from a catalog", path={"catalog": Name}, body=DeletionRequest,
            responses={200: DeletionReport})
def delete_items(catalog: str):
    """{"ids": [...]}: those items leave every answer at once; the next index build purges them."""
    req = DeletionRequest.model_validate(json_object("a JSON object with ids"))
    with session_scope() as session:
        return respond(DeletionReport, catalogs.delete_items(session, catalog, req.ids))


@bp.delete("/catalogs/<catalog>/items/<path:item_id>")
@documented("Delete one item from a catalog", path={"catalog": Name}, responses={204: None})
def delete_item(catalog: str, item_id: str):
    """204 with no body, as every DELETE (deleting it again too); 404 for an item the catalog never had."""
    with session_scope() as session:
        catalogs.delete_item(session, catalog, item_id)
    return "", 204


@bp.get("/catalogs/<catalog>/items/<path:item_id>/thumbnail")
@documented("An item's thumbnail (JPEG)", path={"catalog": Name}, query=ThumbnailQuery,
            responses={200: {"image/jpeg": {"type": "string", "contentMediaType": "image/jpeg"}}})
def get_thumbnail(catalog: str, item_id: str):
    query = parse_query(ThumbnailQuery)
    settings = current_app.config["IMGQ_SETTINGS"]
    with session_scope() as session:
        data = catalogs.thumbnail(session, settings, catalog, item_id, query.size)
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "max-age=3600"})


def _query_from_upload() -> SimilarQuery:
    """multipart: the image as a part named `image`, the other fields as form fields."""
    upload = request.files.get("image")
    if upload is None:
        raise InvalidRequest("send the query image as a multipart part named 'image'", field="image")
    data = upload.stream.read(MAX_QUERY_IMAGE_BYTES + 1)
    if len(data) > MAX_QUERY_IMAGE_BYTES:
        raise RequestEntityTooLarge(f"a query image may have at most {MAX_QUERY_IMAGE_BYTES} bytes", field="image")
    if not data:
        raise InvalidRequest("the uploaded query image is empty", field="image")
    fields = {k: v for k, v in form_fields().items() if v != ""}
    return SimilarQuery.model_validate({**fields, "image_base64": similar.encode_image(data)})


@bp.post("/similar")
@documented("Find similar images", body=SimilarQuery, form=QUERY_UPLOAD, responses={200: SimilarAnswer},
            errors=(404, 409, 422, 503), description=NEEDS_WORKER)
def similar_one():
    if request.mimetype == "multipart/form-data":
        query = _query_from_upload()
    elif request.is_json:
        query = SimilarQuery.model_validate(json_object("a JSON object (a similar-image query)"))
    else:
        raise InvalidRequest("send application/json (item_id or image_uri) or multipart/form-data (an image)")
    answers = similar.search(current_app.config["IMGQ_SETTINGS"], [query], current_app.config["IMGQ_INDEXES"])
    return respond(SimilarAnswer, answers[0])


@bp.post("/similar/batch")
@documented("Find similar images for several queries", body=SimilarBatch, responses={200: SimilarAnswers},
            errors=(404, 409, 422, 503), description=NEEDS_WORKER)
def similar_batch():
    batch = SimilarBatch.model_validate(json_object("a JSON object with queries"))
    answers = similar.search(current_app.config["IMGQ_SETTINGS"], batch.queries, current_app.config["IMGQ_INDEXES"])
    return respond(SimilarAnswers, {"answers": answers})
