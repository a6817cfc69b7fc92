"""HTTP endpoints for catalogs and similar-image search: catalogs and their indexes, index jobs, deleting items,
thumbnails, and queries (one, or a batch in one request)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from shared.core.db import session_scope
from shared.core.errors import InvalidRequest, RequestEntityTooLarge
from shared.core.names import check_name
from shared.schemas.catalogs import DeletionRequest, IndexRequest, SimilarBatch, SimilarQuery
from shared.services import catalogs, similar, submission
from web.http import accepted, form_fields, json_object, origin
from web.pagination import PageQuery, decode_cursor, page_body, parse_query

bp = Blueprint("catalogs", __name__, url_prefix="/api/v1")

MAX_QUERY_IMAGE_BYTES = 10 * 1024 * 1024  # an uploaded query image travels to the worker inside its message


@bp.get("/catalogs")
def list_catalogs():
    query = parse_query(PageQuery)
    with session_scope() as session:
        rows, next_key = catalogs.catalogs_page(session, limit=query.limit, after=decode_cursor(query.after, str))
    return jsonify(page_body("catalogs", rows, next_key, query))


@bp.get("/catalogs/<catalog>")
def get_catalog(catalog: str):
    with session_scope() as session:
        return jsonify(catalogs.catalog_json(session, catalog))


@bp.post("/catalogs/<catalog>/indexes")
def create_index_job(catalog: str):
    """shared/schemas/catalogs.IndexRequest (an empty body is a build) -> 202 with the index job."""
    check_name(catalog, "catalog")
    who = origin()
    req = IndexRequest.model_validate(json_object("a JSON object (an index request)") if request.content_length else {})
    params = req.build_params(current_app.config["IMGQ_SETTINGS"].exact_index_below)
    fingerprint = submission.fingerprint({"kind": "index", "catalog": catalog, "space": req.space, "mode": req.mode,
                                          "params": params.model_dump() if params is not None else None})
    return accepted(*submission.submit_index(catalog=catalog, space=req.space, mode=req.mode, params=params,
                                             origin=who, request_fingerprint=fingerprint))


@bp.post("/catalogs/<catalog>/deletions")
def delete_items(catalog: str):
    """{"ids": [...]}: those items leave every answer at once; the next index build purges them."""
    req = DeletionRequest.model_validate(json_object("a JSON object with ids"))
    with session_scope() as session:
        return jsonify(catalogs.delete_items(session, catalog, req.ids))


@bp.delete("/catalogs/<catalog>/items/<path:item_id>")
def delete_item(catalog: str, item_id: str):
    """204 with no body, as every DELETE (deleting it again too); 404 for an item the catalog never had."""
    with session_scope() as session:
        catalogs.delete_item(session, catalog, item_id)
    return "", 204


@bp.get("/catalogs/<catalog>/items/<path:item_id>/thumbnail")
def get_thumbnail(catalog: str, item_id: str):
    size = request.args.get("size", "160")
    if not size.isdigit():
        raise InvalidRequest("size must be an integer", field="size")
    settings = current_app.config["IMGQ_SETTINGS"]
    with session_scope() as session:
        data = catalogs.thumbnail(session, settings, catalog, item_id, int(size))
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
def similar_one():
    if request.mimetype == "multipart/form-data":
        query = _query_from_upload()
    elif request.is_json:
        query = SimilarQuery.model_validate(json_object("a JSON object (a similar-image query)"))
    else:
        raise InvalidRequest("send application/json (item_id or image_uri) or multipart/form-data (an image)")
    return jsonify(similar.search(current_app.config["IMGQ_SETTINGS"], [query], current_app.config["IMGQ_INDEXES"])[0])


@bp.post("/similar/batch")
def similar_batch():
    batch = SimilarBatch.model_validate(json_object("a JSON object with queries"))
    answers = similar.search(current_app.config["IMGQ_SETTINGS"], batch.queries, current_app.config["IMGQ_INDEXES"])
    return jsonify({"answers": answers})
