"""The arithmetic of judging a model, on arrays only (no database, no model files, no choice of data): a model's
outputs for uint8 pixels in batches, those outputs in the user's units, holdout metrics and the shadow diff's report.
The gate's rule is gate.py's; comparison.py applies both to a trained candidate and to production."""
from __future__ import annotations

import numpy as np

from shared.images.imaging import scale_pixels
from shared.models import targets as target_transforms

SCATTER_POINTS = 500  # pairs of (production, candidate) outputs a shadow diff keeps for a scatter plot


def predict(model, pixels: np.ndarray, pixel_scale: str, batch_size: int = 256) -> np.ndarray:
    """Model outputs for uint8 pixels, scaled to the model's input range one batch at a time."""
    outs = [np.asarray(model(scale_pixels(pixels[i:i + batch_size].astype(np.float32), pixel_scale),
                             training=False)) for i in range(0, len(pixels), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,))


def to_user_units(task: str, raw: np.ndarray, transform: dict, geometries) -> np.ndarray:
    """Regression: inverse target transform; keypoints: original image pixels; classification: probabilities."""
    if task == "regression":
        return target_transforms.inverse(transform, raw)
    if task == "keypoints":
        out = np.empty_like(raw, dtype=np.float64)
        for i, (row, g) in enumerate(zip(raw, geometries)):
            xs, ys = g.to_original(row[0::2], row[1::2])
            out[i, 0::2], out[i, 1::2] = xs, ys
        return out
    return raw


def holdout_metrics(task: str, predicted: np.ndarray, truth: np.ndarray, *, train_truth=None) -> dict:
    """`predicted` in user units (probabilities for classification); `truth` raw targets or label indices."""
    if len(truth) == 0:
        return {"n": 0}
    if task == "classification":
        p = np.clip(predicted, 1e-7, 1)
        return {"n": int(len(truth)), "accuracy": float((predicted.argmax(1) == truth).mean()),
                "log_loss": float(-np.log(p[np.arange(len(truth)), truth]).mean())}
    err = predicted - truth
    out = {"n": int(len(truth)), "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean()))}
    if task == "keypoints":
        d = np.sqrt(err[:, 0::2] ** 2 + err[:, 1::2] ** 2)
        out["pixel_error"] = float(d.mean())
    else:
        ss = float(((truth - truth.mean(0)) ** 2).sum())
        out["r2"] = float(1 - (err ** 2).sum() / ss) if ss > 0 else None
        if train_truth is not None and len(train_truth):
            out["baseline_mae"] = float(np.abs(truth - train_truth.mean(0)).mean())
    return out


def shadow_diff(task: str, ids: list[str], candidate: np.ndarray, production: np.ndarray,
                class_names=None, top: int = 10, large_change: float | None = None) -> dict:
    """How the candidate's answers differ from production's on the same items (user units), with the share of
    large changes: a changed class, or (regression, keypoints) a mean change above `large_change`; `agreement` is
    the share of items without one. For the dashboard's plots: a classifier's confusion of production's class
    against the candidate's, or (regression, keypoints) up to SCATTER_POINTS pairs of the first output column."""
    report: dict = {"items": len(ids)}
    if not ids:
        return report
    if task == "classification":
        a, b = candidate.argmax(1), production.argmax(1)
        report["agreement"] = float((a == b).mean())
        report["large_change_share"] = float((a != b).mean())
        changed = np.nonzero(a != b)[0][:top]
        report["changed"] = [{"id": ids[i], "production": class_names[b[i]], "candidate": class_names[a[i]]}
                             for i in changed]
        report["class_share"] = {c: {"production": float((b == k).mean()), "candidate": float((a == k).mean())}
                                 for k, c in enumerate(class_names)}
        report["confusion"] = _confusion(b, a, class_names)
        return report
    change = candidate - production
    size = np.abs(change).mean(1) if change.ndim > 1 else np.abs(change)
    order = np.argsort(-size)[:top]
    report["mean_abs_change"] = float(size.mean())
    if large_change is not None:
        report["large_change"] = large_change
        report["large_change_share"] = float((size > large_change).mean())

    def dist(v):
        v = v.reshape(len(v), -1)[:, 0]
        return {"mean": float(v.mean()), "std": float(v.std()),
                **{f"p{q}": float(np.percentile(v, q)) for q in (5, 50, 95)}}

    report["distribution"] = {"production": dist(production), "candidate": dist(candidate)}
    report["largest_changes"] = [{"id": ids[i], "production": production[i].tolist(),
                                  "candidate": candidate[i].tolist()} for i in order]
    if large_change is not None:
        report["agreement"] = 1 - report["large_change_share"]  # the share of items whose change is not large
    first = lambda v: v.reshape(len(v), -1)[:SCATTER_POINTS, 0]  # noqa: E731
    report["pairs"] = {"production": first(production).tolist(), "candidate": first(candidate).tolist()}
    return report


def _confusion(production: np.ndarray, candidate: np.ndarray, class_names) -> dict:
    """{production's class: {candidate's class: items}}, the pairs that occur."""
    out: dict = {}
    for p, c in zip(production.tolist(), candidate.tolist()):
        row = out.setdefault(class_names[p], {})
        row[class_names[c]] = row.get(class_names[c], 0) + 1
    return out
