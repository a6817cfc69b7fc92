"""What the request schemas share: the strict base model, bounded string types, and a field-level error."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=500)]  # job_items.item_id, embeddings.item_id
Category = Annotated[str, StringConstraints(min_length=1, max_length=200)]  # job_items.category
Column = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# a path or s3:// URI under the data roots, or an image URL
Uri = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
SpaceName = Annotated[str, StringConstraints(min_length=1, max_length=300)]  # embeddings.space


class Strict(BaseModel):
    """Unknown fields are refused; `model...` field names are allowed (a request names its model)."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def refuse(title: str, problems: Iterable[tuple[tuple, str, object]]) -> None:
    """Raise one ValidationError for problems found across fields, each at its own location: (loc, message,
    input). Raised from a model validator, each location is relative to that model and pydantic prefixes the
    path to it, so the client sees e.g. `augmentation.flip`, or `train.augmentation.flip` inside a schedule."""
    details = [InitErrorDetails(type=PydanticCustomError("value_error", "{reason}", {"reason": message}),
                                loc=loc, input=value) for loc, message, value in problems]
    if details:
        raise ValidationError.from_exception_data(title, details)
