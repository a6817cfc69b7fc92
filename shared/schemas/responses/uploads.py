"""Uploads sent in parts as POST /api/v1/uploads and GET /api/v1/uploads/<id> describe them
(shared/services/uploads.upload_json), and the answer to a part."""
from __future__ import annotations

from pydantic import Field

from shared.schemas.responses.common import Resource, Timestamp


class UploadLinks(Resource):
    self: str
    files: str = Field(description="POST the next part here (multipart, parts named `files`)")
    job: str | None = Field(default=None, description="the job that took the upload's files, once one did")


class Upload(Resource):
    id: str = Field(description="name it as `upload` in a score or embed request")
    files: int = Field(description="files stored so far (each name once)")
    bytes: int = Field(description="their total size")
    job: str | None = Field(description="the job that took the files (an upload is used once); null until then")
    created_at: Timestamp
    updated_at: Timestamp = Field(description="when the last part was added; an upload left alone for "
                                              "IMGQ_ORPHAN_UPLOAD_AFTER seconds, and never used, is removed")
    links: UploadLinks


class UploadPart(Resource):
    added: int = Field(description="files of this part stored now")
    repeated: int = Field(description="files of this part the upload already held, same name and bytes: a part "
                                      "sent again adds nothing")
    upload: Upload
