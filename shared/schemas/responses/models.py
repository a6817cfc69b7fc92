"""The model registry's answers (shared/services/model_registry.py): model names, versions and aliases."""
from __future__ import annotations

from pydantic import Field

from shared.core.vocab import PixelScale, ResizeMode, Task
from shared.schemas.responses.common import FreeForm, NextLink, Resource, Timestamp


class ModelSummary(Resource):
    name: str
    versions: int
    production: int | None = Field(description="the version the production alias points at")


class ModelsPage(Resource):
    models: list[ModelSummary]
    next: NextLink


class Version(Resource):
    name: str
    version: int
    ref: str = Field(description="name@version")
    aliases: list[str]
    task: Task
    input_height: int
    input_width: int
    resize_mode: ResizeMode
    pixel_scale: PixelScale
    output_names: list[str] | None
    class_names: list[str] | None
    target_transform: FreeForm = Field(description="{kind: none|log1p|standardise|log1p_arctan, ...its parameters}")
    sha256: str
    size_bytes: int
    description: str | None
    lineage: FreeForm | None = Field(description="a trained version: its job, parent, data and metrics")
    created_at: Timestamp


class VersionsPage(Resource):
    name: str
    versions: list[Version]
    next: NextLink


class Alias(Resource):
    name: str
    alias: str
    version: int
    updated_at: Timestamp
