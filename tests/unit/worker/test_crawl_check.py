"""worker.training.crawl_check's figures on arrays: a shuffled label column is quarantined naming the agreement
check and its figures, a clean crawl is not; residuals, distribution, leaks and unreadable files."""
from __future__ import annotations

import numpy as np
import pytest

from shared.schemas.training import CrawlCheck
from worker.training.crawl_check import Rows, crawl_figures


def labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5, n).astype(str)


def rows(truth, answers, prefix="n", hashes=None, unreadable=0) -> Rows:
    ids = [f"{prefix}{i}" for i in range(len(truth))]
    return Rows(ids, np.asarray(truth), np.asarray(answers), hashes or [f"h-{prefix}{i}" for i in ids], unreadable)


def test_a_shuffled_label_column_is_quarantined_and_a_clean_one_is_not():
    truth = labels(400)
    predicted = truth.copy()
    predicted[:20] = "0"  # production right on 95 %
    holdout = rows(truth[:100], predicted[:100], prefix="h")
    clean = crawl_figures("classification", rows(truth, predicted), holdout, labels(1000, 1), None, CrawlCheck())
    assert not clean["quarantined"] and clean["reason"] == "the crawl passed every check"
    shuffled = crawl_figures("classification", rows(np.roll(truth, 7), predicted), holdout, labels(1000, 1), None,
                             CrawlCheck())
    agreement = next(c for c in shuffled["checks"] if c["name"] == "agreement")
    assert shuffled["quarantined"] and agreement["value"] < 0.35
    assert agreement["threshold"] == pytest.approx(agreement["holdout_accuracy"] - 0.25)
    assert "agreement of the new labels with production's predictions" in shuffled["reason"]


def test_a_renamed_category_fails_the_per_class_agreement():
    truth = labels(500)
    predicted = truth.copy()
    truth = np.where(truth == "3", "three", truth)  # renamed upstream: production never says "three"
    report = crawl_figures("classification", rows(truth, predicted), None, None, 0.95, CrawlCheck())
    per_class = next(c for c in report["checks"] if c["name"] == "class_agreement")
    assert per_class["failed_classes"] == ["three"] and report["quarantined"]


def test_regression_residuals_far_above_the_holdout_error_are_quarantined():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 100, (300, 1))
    answers = truth + rng.normal(0, 2, truth.shape)
    holdout = rows(truth[:50], answers[:50], prefix="h")
    ok = crawl_figures("regression", rows(truth, answers), holdout, truth, None, CrawlCheck())
    assert not ok["quarantined"], ok["reason"]
    shifted = crawl_figures("regression", rows(np.roll(truth, 1), answers), holdout, truth, None, CrawlCheck())
    residuals = next(c for c in shifted["checks"] if c["name"] == "residuals")
    assert not residuals["passed"] and residuals["value"] > 3 * residuals["holdout_error"]
    assert {"targets", "residuals"} <= set(residuals)


def test_holdout_duplicates_under_other_ids_and_unreadable_files_are_counted():
    truth = labels(100)
    new = rows(truth, truth, hashes=["dup"] * 5 + [f"x{i}" for i in range(95)], unreadable=20)
    holdout = Rows(["h0"], np.array(["1"]), np.array(["1"]), ["dup"])
    report = crawl_figures("classification", new, holdout, None, None, CrawlCheck())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["holdout_duplicates"]["count"] == 5 and checks["unreadable"]["count"] == 20
    assert checks["unreadable"]["value"] == 20 / 120 and not checks["unreadable"]["passed"]
    assert report["rows"] == 120 and report["quarantined"]
    assert "holdout_duplicates" in report["reason"] and "unreadable" in report["reason"]
