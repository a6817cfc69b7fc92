"""HTTP endpoints for training datasets: checking one before training on it."""
from __future__ import annotations

from typing import Annotated

from flask import Blueprint, current_app, jsonify, request
from pydantic import Field, StringConstraints

from shared.core.errors import InvalidRequest
from shared.images.datasets import DatasetSpec, check_dataset
from web.http import json_object

bp = Blueprint("datasets", __name__, url_prefix="/api/v1/datasets")

class DatasetCheckRequest(DatasetSpec):
    """Body of POST /api/v1/datasets/check: a dataset's description plus how to check it (extra fields are
    refused, so typos are caught)."""
    sample: int | None = Field(default=None, ge=1)
    salt: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "imgq"  # the model name


@bp.post("/check")
def check():
    if not request.is_json:
        raise InvalidRequest("send application/json")
    req = DatasetCheckRequest.model_validate(json_object())
    settings = current_app.config["IMGQ_SETTINGS"]
    report = check_dataset(settings.data_roots, req.only_dataset(), max_pixels=settings.max_image_pixels,
                           salt=req.salt, sample=req.sample, threads=settings.decode_threads)
    return jsonify(report)
