"""HTTP endpoints for training datasets: checking one before training on it."""
from __future__ import annotations

from typing import Annotated

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.datasets import DatasetSpec, check_dataset
from shared.errors import InvalidRequest
from web.http import json_object

bp = Blueprint("datasets", __name__, url_prefix="/api/v1/datasets")

Column = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class DatasetCheckRequest(BaseModel):
    """Body of POST /api/v1/datasets/check (extra fields are refused, so typos are caught)."""
    model_config = ConfigDict(extra="forbid")
    path: Annotated[str, StringConstraints(min_length=1, max_length=4000)]
    image_column: Column = "image"
    id_column: Column | None = None
    target_columns: list[Column] = Field(default_factory=list, max_length=100)
    label_column: Column | None = None
    sample: int | None = Field(default=None, ge=1)
    salt: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "imgq"  # the model name

    def spec(self) -> DatasetSpec:
        return DatasetSpec(path=self.path, image_column=self.image_column, id_column=self.id_column,
                           target_columns=list(self.target_columns), label_column=self.label_column)


@bp.post("/check")
def check():
    if not request.is_json:
        raise InvalidRequest("send application/json")
    req = DatasetCheckRequest.model_validate(json_object())
    settings = current_app.config["IMGQ_SETTINGS"]
    report = check_dataset(settings.data_roots, req.spec(), max_pixels=settings.max_image_pixels,
                           salt=req.salt, sample=req.sample, threads=settings.decode_threads)
    return jsonify(report)
