"""HTTP endpoints for training datasets: checking one before training on it."""
from __future__ import annotations

from flask import Blueprint, current_app, request

from shared.core.errors import InvalidRequest
from shared.images.datasets import check_dataset
from shared.schemas.responses.training import DatasetReport
from shared.schemas.training import DatasetCheckRequest
from web.http import json_object, respond
from web.openapi import documented

bp = Blueprint("datasets", __name__, url_prefix="/api/v1/datasets")


@bp.post("/check")
@documented("Check a dataset before training on it", body=DatasetCheckRequest, responses={200: DatasetReport},
            description="Every file is stat'ed, `sample` of them (all by default) read and decoded: missing and "
                        "unreadable images, duplicate ids, identical photos across splits or with different labels, "
                        "target skew, class balance and split sizes.")
def check():
    if not request.is_json:
        raise InvalidRequest("send application/json")
    req = DatasetCheckRequest.model_validate(json_object())
    settings = current_app.config["IMGQ_SETTINGS"]
    report = check_dataset(settings.data_roots, req.only_dataset(), max_pixels=settings.max_image_pixels,
                           salt=req.salt, sample=req.sample, threads=settings.decode_threads)
    return respond(DatasetReport, report)
