"""The check of a night's crawl before a fine-tune trains on it: the rows added since the previous slot
(`dataset.added_since`) compared with what production believes, and quarantined when they disagree too much.

Checks (shared/core/vocab.CRAWL_CHECKS; thresholds in the request's `crawl_check`, shared/schemas/training.CrawlCheck):
- classification: `agreement`, the share of new labels production predicts, against production's accuracy on its
  own holdout (measured now, on the holdout of the dataset it was trained on); `class_agreement`, per class of at
  least `min_class_rows` new rows against production's holdout recall of that class. A shuffled or shifted label
  column falls far below both; a renamed category below the second.
- regression, keypoints: `residuals`, production's mean error on the new rows against its holdout error, with the
  new targets' and the residuals' quantiles.
- `distribution`: the new class shares (total variation distance) or targets (Kolmogorov-Smirnov statistic) against
  the training data's; `holdout_duplicates`: new rows (under another id) whose file bytes are a holdout image's, a
  leak into training; `unreadable`: new rows whose file is missing or cannot be decoded.
The figures are pure functions of arrays (`crawl_figures`); `check_crawl` loads the rows and production and
runs them. Invariant: a quarantined crawl trains nothing; its report is stored on the run (and its slot's decision
says "quarantined") before the job fails with the report's reason.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.errors import ImgqError
from shared.core.tables import ScheduleRun, TrainRun
from shared.images.datasets import assign_splits
from shared.images.imaging import Preprocessing
from shared.models.model_inspect import load_keras_safely
from shared.schemas.training import CrawlCheck, DatasetRef, TrainRequest
from shared.services.model_files import version_file
from worker.training import data as training_data
from worker.training import evaluate, gate, lifecycle

log = logging.getLogger(__name__)
QUARANTINED = "quarantined"  # the schedule slot's decision for a crawl that failed its check


class Quarantined(training_data.DataError):
    """The crawl failed its check: the job fails with this reason and nothing is trained."""


@dataclass
class Rows:
    """Rows of one dataset as production sees them: ids, truth (label names or targets), production's answers
    (class names or user units) and content hashes; `unreadable` counts rows with no usable file."""
    ids: list[str]
    truth: np.ndarray
    answers: np.ndarray | None
    hashes: list[str]
    unreadable: int = 0


# --------------------------------------------------------------------------------------------- figures


def _check(name: str, value, threshold, passed: bool, **figures) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "passed": bool(passed), **figures}


def _class_references(holdout: Rows | None, overall: float) -> dict[str, float]:
    """Production's recall per class on its own holdout (classes with at least 5 holdout rows)."""
    if holdout is None or not len(holdout.ids):
        return {}
    return {str(c): float((holdout.answers[holdout.truth == c] == c).mean()) for c in set(holdout.truth.tolist())
            if (holdout.truth == c).sum() >= 5}


def agreement_checks(new: Rows, holdout: Rows | None, reference: float | None, limits: CrawlCheck) -> list[dict]:
    """Overall agreement of the new labels with production's predictions against its holdout accuracy; per class
    against its holdout recall of that class (the overall accuracy when the holdout has few of them), with the
    looser `max_class_agreement_drop`: a class production is weak on is not a broken crawl, a renamed one is."""
    if holdout is not None and len(holdout.ids):
        reference = float((holdout.answers == holdout.truth).mean())
    if reference is None or not len(new.ids):
        return [_check("agreement", None, None, True, note="no holdout accuracy of production to compare with")]
    floor = max(0.0, reference - limits.max_agreement_drop)
    recalls = _class_references(holdout, reference)
    agree = new.answers == new.truth
    overall = float(agree.mean())
    per_class = {str(c): {"rows": int((new.truth == c).sum()), "agreement": float(agree[new.truth == c].mean()),
                          "floor": max(0.0, recalls.get(str(c), reference) - limits.max_class_agreement_drop)}
                 for c in sorted(set(new.truth.tolist()))}
    low = sorted(c for c, v in per_class.items()
                 if v["rows"] >= limits.min_class_rows and v["agreement"] < v["floor"])
    return [_check("agreement", overall, floor, overall >= floor, holdout_accuracy=reference),
            _check("class_agreement", {c: v["agreement"] for c, v in per_class.items()},
                   {c: v["floor"] for c, v in per_class.items()}, not low,
                   rows={c: v["rows"] for c, v in per_class.items()}, failed_classes=low)]


def _quantiles(values: np.ndarray) -> dict:
    values = values.reshape(len(values), -1)[:, 0] if len(values) else values
    return {f"p{q}": float(np.percentile(values, q)) for q in (5, 50, 95)} if len(values) else {}


def residual_checks(task: str, new: Rows, holdout: Rows | None, reference: float | None,
                    limits: CrawlCheck) -> list[dict]:
    """Production's error on the new rows against its error on its holdout."""
    if holdout is not None and len(holdout.ids):
        reference = float(gate.item_errors(task, holdout.answers, holdout.truth).mean())
    if not len(new.ids):
        return []
    errors = gate.item_errors(task, new.answers, new.truth)
    value = float(errors.mean())
    figures = {"holdout_error": reference, "targets": _quantiles(new.truth),
               "residuals": _quantiles(np.asarray(new.answers) - new.truth)}
    if not reference:
        return [_check("residuals", value, None, True, note="no holdout error of production to compare with",
                       **figures)]
    ceiling = reference * limits.max_error_ratio
    return [_check("residuals", value, ceiling, value <= ceiling, **figures)]


def distribution_check(task: str, new: np.ndarray, training: np.ndarray | None, limits: CrawlCheck) -> dict | None:
    """Class shares (total variation distance) or targets (KS statistic) of the new rows against the training data's."""
    if training is None or not len(training) or not len(new):
        return None
    if task == "classification":
        classes = sorted(set(new.tolist()) | set(training.tolist()))
        shares = {side: {c: float((v == c).mean()) for c in classes} for side, v in (("new", new),
                                                                                    ("training", training))}
        value = 0.5 * sum(abs(shares["new"][c] - shares["training"][c]) for c in classes)
        return _check("distribution", value, limits.max_distribution_shift, value <= limits.max_distribution_shift,
                      statistic="total variation distance", shares=shares)
    flat_new, flat_train = new.reshape(len(new), -1)[:, 0], training.reshape(len(training), -1)[:, 0]
    value = float(stats.ks_2samp(flat_new, flat_train).statistic)
    return _check("distribution", value, limits.max_distribution_shift, value <= limits.max_distribution_shift,
                  statistic="Kolmogorov-Smirnov", new=_quantiles(flat_new), training=_quantiles(flat_train))


def file_checks(new: Rows, total: int, holdout: Rows | None, limits: CrawlCheck) -> list[dict]:
    """Unreadable new rows, and new rows under another id whose file is a holdout image (a leak)."""
    seen = dict(zip(holdout.hashes, holdout.ids)) if holdout is not None else {}
    leaks = [i for i, h in zip(new.ids, new.hashes) if h in seen and seen[h] != i]
    share = len(leaks) / total if total else 0.0
    unreadable = new.unreadable / total if total else 0.0
    return [_check("holdout_duplicates", share, limits.max_holdout_duplicates, share <= limits.max_holdout_duplicates,
                   count=len(leaks), examples=leaks[:10]),
            _check("unreadable", unreadable, limits.max_unreadable, unreadable <= limits.max_unreadable,
                   count=new.unreadable)]


def crawl_figures(task: str, new: Rows, holdout: Rows | None, training_truth: np.ndarray | None,
                  reference: float | None, limits: CrawlCheck) -> dict:
    """The report: every check's figures and verdict, whether the crawl is quarantined, and why in words."""
    total = len(new.ids) + new.unreadable
    checks = (agreement_checks(new, holdout, reference, limits) if task == "classification"
              else residual_checks(task, new, holdout, reference, limits))
    checks += [c for c in [distribution_check(task, new.truth, training_truth, limits)] if c]
    checks += file_checks(new, total, holdout, limits)
    failed = [c for c in checks if not c["passed"]]
    return {"rows": total, "checks": checks, "quarantined": bool(failed), "reason": explain(failed)}


def _figure(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def explain(failed: list[dict]) -> str:
    if not failed:
        return "the crawl passed every check"
    words = []
    for c in failed:
        if c["name"] == "agreement":
            words.append(f"agreement of the new labels with production's predictions {c['value']:.4g} is below "
                         f"{c['threshold']:.4g} (production's holdout accuracy {c['holdout_accuracy']:.4g} minus "
                         "max_agreement_drop)")
        elif c["name"] == "class_agreement":
            low = ", ".join(f"{k} {c['value'][k]:.3g} < {c['threshold'][k]:.3g}" for k in c["failed_classes"])
            words.append(f"class_agreement of the new labels with production's predictions below production's "
                         f"holdout recall minus max_class_agreement_drop for {low}")
        else:
            words.append(f"{c['name']} {_figure(c['value'])} exceeds {_figure(c['threshold'])}")
    return "crawl quarantined, nothing trained: " + "; ".join(words)


# --------------------------------------------------------------------------------------------- loading


def read_rows(task: str, frame: pd.DataFrame, columns: list[str], model, production, settings: Settings) -> Rows:
    """Decode `frame`'s files at production's input (through the cache) and take production's answers on them."""
    prep = Preprocessing(production.input_height, production.input_width, resize_mode=production.resize_mode,
                         pixel_scale=production.pixel_scale)
    usable = frame[frame["error"].isna()] if "error" in frame.columns else frame
    usable = usable[usable[columns].notna().all(axis=1)] if columns else usable
    cache = training_data.image_cache(settings, prep)
    loaded = cache.load_many(usable["path"].tolist(), threads=settings.decode_threads, pixels=True)
    ok = np.array([entry[0] is not None for entry in loaded], dtype=bool)
    usable, loaded = usable[ok], [e for e, good in zip(loaded, ok) if good]
    truth = (usable["label"].astype(str).to_numpy() if task == "classification"
             else usable[columns].to_numpy(dtype=np.float64))
    answers = None
    if loaded:
        raw = evaluate.predict(model, np.stack([e[0] for e in loaded]), production.pixel_scale)
        answers = evaluate.to_user_units(task, raw, production.target_transform, [e[1] for e in loaded])
        if task == "classification":
            answers = np.array(production.class_names, dtype=object)[answers.argmax(1)].astype(str)
    return Rows(usable["item_id"].astype(str).tolist(), truth, answers, [e[2] for e in loaded],
                unreadable=int(len(frame) - len(loaded)))


def production_dataset(production, settings: Settings) -> tuple[pd.DataFrame | None, DatasetRef | None]:
    """The dataset production was trained on (its lineage), split as its training split it, or (None, None)."""
    lineage = production.lineage or {}
    if not lineage.get("dataset"):
        return None, None
    ref = DatasetRef.model_validate(lineage["dataset"])
    splits = (lineage.get("hyperparameters") or {}).get("splits") or {}
    try:
        frame = training_data.rows_added_since(training_data.read_dataset(settings, training_data.dataset_spec(ref)),
                                               ref.added_since) if ref.added_since else \
            training_data.read_dataset(settings, training_data.dataset_spec(ref))
    except (OSError, ValueError, ImgqError) as exc:  # moved or gone since: the check goes on without it
        log.warning("crawl check: production's dataset %s cannot be read: %s", ref.path, exc)
        return None, None
    return assign_splits(frame, salt=production.name, validation=splits.get("validation", 0.1),
                         holdout=splits.get("holdout", 0.1)), ref


def check_crawl(req: TrainRequest, production, settings: Settings) -> dict:
    """The report on the rows `req` adds (see the module docstring); production is the version its name's
    production alias points at (detached)."""
    task, columns = req.task, list(req.dataset.target_columns)
    frame = training_data.rows_added_since(
        training_data.read_dataset(settings, training_data.dataset_spec(req.dataset)), req.dataset.added_since)
    model = load_keras_safely(str(version_file(production, settings)))
    new = read_rows(task, frame, columns, model, production, settings)
    trained, _ = production_dataset(production, settings)
    holdout = training_truth = None
    if trained is not None:
        holdout = read_rows(task, trained[trained["split"] == "holdout"], columns, model, production, settings)
        rest = trained[trained["split"] != "holdout"]
        training_truth = (rest["label"].astype(str).to_numpy() if task == "classification"
                          else rest[columns].dropna().to_numpy(dtype=np.float64))
    metrics = (production.lineage or {}).get("holdout_metrics") or {}
    reference = metrics.get("accuracy") if task == "classification" else \
        metrics.get("pixel_error" if task == "keypoints" else "mae")
    report = crawl_figures(task, new, holdout, training_truth, reference, req.crawl_check)
    return {"production": f"{production.name}@{production.version}",
            "added_since": req.dataset.added_since.isoformat(), **report}


def applies(req: TrainRequest) -> bool:
    """The run trains on a crawl's increment and its request keeps the check on."""
    return req.dataset.added_since is not None and req.crawl_check.enabled


def record(job_id: str, attempt: int | None, report: dict) -> None:
    """Store the report on the run and, for a quarantined crawl, the slot's decision and reason; only while the
    attempt owns the run."""
    with session_scope() as session:
        if not lifecycle.owns(session, job_id, attempt):
            return
        run = session.get(TrainRun, job_id)
        run.crawl_check = report
        if report.get("quarantined") and run.schedule_run_id is not None:
            slot = session.get(ScheduleRun, run.schedule_run_id)
            slot.decision, slot.reason = QUARANTINED, report["reason"]
