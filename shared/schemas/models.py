"""Model registry requests: importing a model file (POST /api/v1/models, multipart) and moving an alias."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from shared.core.names import Name
from shared.core.tables import MAX_VERSION
from shared.core.vocab import PixelScale, ResizeMode, Task
from shared.models.targets import NoTransform, TargetTransform
from shared.schemas.common import Strict

Label = Annotated[str, StringConstraints(min_length=1, max_length=200)]  # a class or an output's name


class AliasRequest(Strict):
    version: int = Field(ge=1, le=MAX_VERSION)


class ModelImportForm(Strict):
    """The multipart fields of POST /api/v1/models (the file itself is the `file` part). Lists may be sent as JSON
    or comma-separated, `target_transform` as JSON or as a bare kind (web/api_models.py reads the text fields)."""
    name: Name
    task: Task
    input_size: int | None = Field(default=None, ge=8, le=4096)
    input_height: int | None = Field(default=None, ge=8, le=4096)
    input_width: int | None = Field(default=None, ge=8, le=4096)
    resize_mode: ResizeMode = "stretch"
    pixel_scale: PixelScale = "unit"
    class_names: list[Label] | None = Field(default=None, max_length=100_000)
    output_names: list[Label] | None = Field(default=None, max_length=100_000)
    target_transform: TargetTransform = Field(default_factory=NoTransform)
    description: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    promote: bool | None = None

    @model_validator(mode="after")
    def _size(self):
        if self.input_size is None and (self.input_height is None or self.input_width is None):
            raise ValueError("give input_size, or input_height and input_width")
        self.input_height = self.input_height or self.input_size
        self.input_width = self.input_width or self.input_size
        return self
