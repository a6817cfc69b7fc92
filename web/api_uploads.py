"""HTTP endpoints for uploads sent in parts: make one, add parts of files to it, read its totals, delete it. A score
or embed request then names it (`{"model": ..., "upload": "<id>"}`) and its files become the job's items.

Each part is one multipart request, bounded as any upload (IMGQ_MAX_UPLOAD_BYTES, and at most MAX_FORM_PARTS parts
to a request, Flask's default); its files are checked as a single-request upload's are (web/submit.upload_names).
"""
from __future__ import annotations

from flask import Blueprint, current_app, request

from shared.core.errors import InvalidRequest
from shared.schemas.jobs import UploadId, UploadPartForm
from shared.schemas.responses.uploads import Upload, UploadPart
from shared.services import uploads
from web.auth import caller
from web.http import created, form_fields, respond
from web.openapi import Form, Link, documented
from web.submit import upload_names

bp = Blueprint("uploads", __name__, url_prefix="/api/v1/uploads")

PART = "the part's images, one part each; a file's name is its item id (unique within the upload)"
UPLOAD_LINKS = {name: Link(f"uploads.{operation}", {"upload_id": "$response.body#/id"}) for name, operation in
                (("GetUpload", "get_upload"), ("AddFiles", "add_files"), ("DeleteUpload", "delete_upload"))}


@bp.post("")
@documented("Start an upload sent in parts", responses={201: Upload}, links={201: UPLOAD_LINKS},
            description="An empty upload: add its files with POST .../files, part by part, then name it as `upload` "
                        "in a score or embed request. One left alone for IMGQ_ORPHAN_UPLOAD_AFTER seconds and never "
                        "used is removed.")
def create_upload():
    body = uploads.new_upload(current_app.config["IMGQ_SETTINGS"], caller())
    return created(Upload, body, body["links"]["self"])


@bp.post("/<upload_id>/files")
@documented("Add a part of files to an upload", form=Form(UploadPartForm, {"files": PART}, many=frozenset({"files"})),
            responses={200: UploadPart}, errors=(403, 409), path={"upload_id": UploadId},
            description="A file whose name the upload holds with the same bytes is counted as `repeated` and stored "
                        "once, so a part sent again after a failure duplicates nothing; the same name with other "
                        "bytes is a 409 that refuses the whole part, as is adding to an upload a job already took.")
def add_files(upload_id: str):
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest("send the files as multipart/form-data, parts named 'files'", field="files")
    UploadPartForm.model_validate(form_fields())
    files = [f for name in request.files for f in request.files.getlist(name)]
    names = upload_names(files)
    answer = uploads.add_files(current_app.config["IMGQ_SETTINGS"], upload_id,
                               [(name, f.stream) for name, f in zip(names, files)], caller())
    return respond(UploadPart, answer)


@bp.get("/<upload_id>")
@documented("An upload's totals and the job that took it", responses={200: Upload}, errors=(403,),
            path={"upload_id": UploadId})
def get_upload(upload_id: str):
    return respond(Upload, uploads.get_upload(upload_id, caller()))


@bp.delete("/<upload_id>")
@documented("Delete an upload no job took, and its files", responses={204: None}, errors=(403, 409),
            path={"upload_id": UploadId})
def delete_upload(upload_id: str):
    uploads.delete_upload(current_app.config["IMGQ_SETTINGS"], upload_id, caller())
    return "", 204
