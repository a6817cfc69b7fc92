"""Target transforms: what training applied to a regression target, and how scoring inverts it.

A transform is stored as a dict (model_versions.target_transform), e.g. {"kind": "standardise", "mean": 3.1,
"std": 0.8}. Its kinds are shared/core/vocab.TARGET_TRANSFORMS; :data:`TargetTransform` is its one typed
definition (a model import form takes it; :func:`validate` checks a dict against it).
"""
from __future__ import annotations

from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.core.vocab import TARGET_TRANSFORMS

KINDS = TARGET_TRANSFORMS


class _Transform(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoTransform(_Transform):
    kind: Literal["none"] = "none"


class Log1p(_Transform):
    kind: Literal["log1p"]


class Standardise(_Transform):
    """(y - mean) / std."""
    kind: Literal["standardise"]
    mean: float = Field(allow_inf_nan=False)
    std: float = Field(gt=0, allow_inf_nan=False)


class Log1pArctan(_Transform):
    """arctan(log1p(y) / scale): bounded, for heavy-tailed counts."""
    kind: Literal["log1p_arctan"]
    scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)


TargetTransform = Annotated[NoTransform | Log1p | Standardise | Log1pArctan, Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(TargetTransform)
assert {get_args(t.model_fields["kind"].annotation)[0]
        for t in (NoTransform, Log1p, Standardise, Log1pArctan)} == set(KINDS)


def validate(transform: dict) -> dict:
    """The transform as stored, or ValueError saying what is wrong with it (a missing kind means "none")."""
    kind = transform.get("kind", "none")
    if kind not in KINDS:
        raise ValueError(f"unknown target transform {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        return _ADAPTER.validate_python({"kind": "none", **transform}).model_dump()
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ValueError(f"target transform {kind!r}: {'.'.join(str(p) for p in error['loc'][1:])}: "
                         f"{error['msg']}") from None


def forward(transform: dict, y: np.ndarray) -> np.ndarray:
    """Raw target (e.g. page views) -> what the model learns."""
    y = np.asarray(y, dtype=np.float64)
    kind = transform.get("kind", "none")
    if kind == "log1p":
        return np.log1p(y)
    if kind == "standardise":
        return (y - transform["mean"]) / transform["std"]
    if kind == "log1p_arctan":
        return np.arctan(np.log1p(y) / transform.get("scale", 1.0))
    return y


def inverse(transform: dict, y: np.ndarray) -> np.ndarray:
    """Model output -> the raw target's units."""
    y = np.asarray(y, dtype=np.float64)
    kind = transform.get("kind", "none")
    if kind == "log1p":
        return np.expm1(y)
    if kind == "standardise":
        return y * transform["std"] + transform["mean"]
    if kind == "log1p_arctan":
        limit = np.nextafter(np.pi / 2, 0)
        return np.expm1(np.tan(np.clip(y, -limit, limit)) * transform.get("scale", 1.0))
    return y
