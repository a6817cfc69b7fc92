"""Turning a model's raw output rows into named results, per task, and the columns they make."""
from __future__ import annotations

import numpy as np

from shared.models import targets


def default_output_names(task: str, n_outputs: int) -> list[str] | None:
    if task == "regression":
        return ["value"] if n_outputs == 1 else [f"y{i}" for i in range(n_outputs)]
    if task == "keypoints":
        return [f"p{i}" for i in range(n_outputs // 2)]
    return None


def output_columns(task: str, output_names: list[str] | None, class_names: list[str] | None) -> list[str]:
    if task == "classification":
        return ["label", "confidence", *[f"p:{c}" for c in class_names or []]]
    if task == "keypoints":
        return [f"{p}_{axis}" for p in output_names or [] for axis in ("x", "y")]
    return list(output_names or [])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_probabilities(raw: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows of probabilities: a single sigmoid unit becomes (1-p, p); rows that are not already
    probabilities (negative, or not summing to 1) are treated as logits."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.shape[1] == 1 and n_classes == 2:
        p = raw[:, 0]
        if p.min() < 0 or p.max() > 1:
            p = 1 / (1 + np.exp(-p))
        return np.stack([1 - p, p], axis=1)
    is_prob = (raw.min(axis=1) >= 0) & (np.abs(raw.sum(axis=1) - 1) < 1e-3)
    return np.where(is_prob[:, None], raw, _softmax(raw))


def interpret(task: str, raw: np.ndarray, *, output_names, class_names, target_transform,
              geometries=None) -> list[dict]:
    """Raw output rows (batch, n) -> one flat dict per row, in the units the user works in."""
    raw = np.asarray(raw, dtype=np.float64)
    if task == "classification":
        probs = class_probabilities(raw, len(class_names))
        best = probs.argmax(axis=1)
        return [{"label": class_names[b], "confidence": float(row[b]),
                 **{f"p:{c}": float(p) for c, p in zip(class_names, row)}}
                for row, b in zip(probs, best)]
    if task == "keypoints":
        rows = []
        for row, geom in zip(raw, geometries):
            xs, ys = geom.to_original(row[0::2], row[1::2])
            out = {}
            for name, x, y in zip(output_names, np.atleast_1d(xs), np.atleast_1d(ys)):
                out[f"{name}_x"], out[f"{name}_y"] = float(x), float(y)
            rows.append(out)
        return rows
    values = targets.inverse(target_transform, raw)
    return [{name: float(v) for name, v in zip(output_names, row)} for row in values]
