"""Target transforms: what training applied to a regression target, and how scoring inverts it."""
from __future__ import annotations

import numpy as np

KINDS = ("none", "log1p", "standardise", "log1p_arctan")


def validate(transform: dict) -> dict:
    kind = transform.get("kind", "none")
    if kind not in KINDS:
        raise ValueError(f"unknown target transform {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "standardise":
        if "mean" not in transform or "std" not in transform:
            raise ValueError("target transform 'standardise' needs 'mean' and 'std'")
        if float(transform["std"]) <= 0:
            raise ValueError("target transform 'standardise' needs std > 0")
        return {"kind": kind, "mean": float(transform["mean"]), "std": float(transform["std"])}
    if kind == "log1p_arctan":
        return {"kind": kind, "scale": float(transform.get("scale", 1.0))}
    return {"kind": kind}


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
