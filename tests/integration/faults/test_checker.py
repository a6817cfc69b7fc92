"""The checker catches each broken invariant and passes a correct job, on rows written by hand into a
migrated SQLite database (no server needed)."""
from __future__ import annotations

import pytest
from sqlalchemy import update

from shared.core.db import engine_for, session_scope
from shared.core.migrate import upgrade
from shared.core.tables import Chunk, Job, JobItem, ModelVersion, Result, TrainMetric, TrainRun
from tests.integration.faults.checker import check_score_job, check_train_job, differences, score_job_check

pytestmark = [pytest.mark.faults, pytest.mark.quick]

EXPECTED = {"a": {"value": 1.0}, "b": {"value": 2.5}, "bad": None}


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'checker.db'}"
    upgrade(url)
    yield url
    engine_for(url).dispose()


def add_score_job(url: str, job_id: str = "job-1", status: str = "succeeded", results: dict | None = None,
                  items: list[str] | None = None, chunk_state: str = "done", **counters) -> str:
    """A score job of one chunk; `results` maps item -> outputs, or an error string."""
    results = {"a": {"value": 1.0}, "b": {"value": 2.5}, "bad": "not an image"} if results is None else results
    items = sorted(EXPECTED) if items is None else items
    failed = sum(isinstance(r, str) for r in results.values())
    with session_scope(url) as session:
        session.add(Job(id=job_id, kind="score", status=status, model_ref="m", source={"type": "items"},
                        total_items=len(items), done_items=len(results), failed_items=failed, cached_items=0,
                        total_chunks=1, **counters))
        session.flush()
        session.add(Chunk(job_id=job_id, chunk_no=0, state=chunk_state, item_count=len(items)))
        session.add_all(JobItem(job_id=job_id, item_id=i, uri=f"{i}.jpg", chunk_no=0) for i in items)
        session.add_all(Result(job_id=job_id, item_id=i, status="error", error=r) if isinstance(r, str) else
                        Result(job_id=job_id, item_id=i, status="ok", outputs=r) for i, r in results.items())
    return job_id


def set_job(url: str, job_id: str, **values) -> None:
    with session_scope(url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def only(violations: list[str], *words: str) -> str:
    assert len(violations) == 1, violations
    for word in words:
        assert word in violations[0], violations[0]
    return violations[0]


def test_a_correct_score_job_has_no_violation(url):
    job = add_score_job(url)
    check = score_job_check(url, job, EXPECTED)
    assert check.violations == []
    assert (check.items, check.results, check.lost, check.duplicated) == (3, 3, 0, 0)


def test_an_unknown_job_is_a_violation_and_all_its_items_are_lost(url):
    check = score_job_check(url, "nope", EXPECTED)
    only(check.violations, "does not exist")
    assert check.lost == 3


@pytest.mark.parametrize("status", ["queued", "running"])
def test_a_job_that_never_ends_is_caught(url, status):
    job = add_score_job(url, status=status)
    only(check_score_job(url, job, EXPECTED), "not in a terminal state")


def test_a_succeeded_job_with_an_open_chunk_is_caught(url):
    job = add_score_job(url, chunk_state="running")
    only(check_score_job(url, job, EXPECTED), "chunks still open", "0 running")


def test_an_item_without_a_result_in_a_succeeded_job_is_lost(url):
    job = add_score_job(url, results={"a": {"value": 1.0}, "bad": "not an image"})
    check = score_job_check(url, job, EXPECTED)
    only(check.violations, "'b' has no result")
    assert check.lost == 1


def test_a_canceled_job_may_leave_items_without_results(url):
    job = add_score_job(url, status="canceled", results={"a": {"value": 1.0}})
    check = score_job_check(url, job, EXPECTED)
    assert check.violations == [] and check.lost == 0


def test_a_result_for_an_item_not_in_the_job_is_caught(url):
    job = add_score_job(url, results={"a": {"value": 1.0}, "b": {"value": 2.5}, "bad": "not an image",
                                      "stray": {"value": 9.0}})
    only(check_score_job(url, job, EXPECTED), "'stray'", "not in the job")


def test_items_submitted_but_missing_from_the_job_and_the_reverse_are_caught(url):
    job = add_score_job(url)
    violations = check_score_job(url, job, {**EXPECTED, "extra": {"value": 0.0}})
    only(violations, "'extra' was submitted but is not among the job's items")
    violations = check_score_job(url, job, {"a": {"value": 1.0}, "b": {"value": 2.5}})
    only(violations, "'bad' is among the job's items but was never submitted")


def test_a_done_counter_past_the_rows_is_a_duplicate(url):
    job = add_score_job(url)
    set_job(url, job, done_items=5)
    check = score_job_check(url, job, EXPECTED)
    only(check.violations, "jobs.done_items = 5", "rows say 3", "duplicated")
    assert check.duplicated == 2


def test_a_done_counter_short_of_the_rows_is_caught(url):
    job = add_score_job(url)
    set_job(url, job, done_items=2)
    check = score_job_check(url, job, EXPECTED)
    only(check.violations, "jobs.done_items = 2", "misses rows")
    assert check.duplicated == 0


@pytest.mark.parametrize("counter, value", [("failed_items", 2), ("cached_items", 1), ("total_items", 4)])
def test_the_other_counters_are_checked_against_the_rows(url, counter, value):
    job = add_score_job(url)
    set_job(url, job, **{counter: value})
    only(check_score_job(url, job, EXPECTED), f"jobs.{counter} = {value}")


def test_outputs_beyond_the_tolerance_are_caught_and_within_it_pass(url):
    job = add_score_job(url, results={"a": {"value": 1.0 + 1e-7}, "b": {"value": 2.6}, "bad": "not an image"})
    only(check_score_job(url, job, EXPECTED), "'b' outputs differ", "2.6", "2.5")
    assert check_score_job(url, job, EXPECTED, tol=0.1) == []


def test_an_item_expected_to_score_that_failed_is_caught(url):
    job = add_score_job(url, results={"a": "decode error", "b": {"value": 2.5}, "bad": "not an image"})
    set_job(url, job, failed_items=2)
    only(check_score_job(url, job, EXPECTED), "'a' was expected to score", "decode error")


def test_an_item_expected_to_fail_that_scored_is_caught(url):
    job = add_score_job(url, results={"a": {"value": 1.0}, "b": {"value": 2.5}, "bad": {"value": 0.0}})
    only(check_score_job(url, job, EXPECTED), "'bad' was expected to fail")


def test_differences_compare_in_depth_relative_for_large_values():
    assert differences({"v": 1e6 + 1.0}, {"v": 1e6}, 1e-5) == []
    assert differences({"v": 1e-3}, {"v": 0.0}, 1e-5) == ["outputs['v'] = 0.001, expected 0.0"]
    assert differences({"label": "cat", "p": [0.1, 0.9]}, {"label": "dog", "p": [0.1]}, 1e-5) == [
        "outputs['label'] = 'cat', expected 'dog'", "outputs['p'] has 2 values, expected 1"]
    assert differences({"a": 1.0}, {"b": 1.0}, 1e-5) == ["outputs['b'] is missing",
                                                         "outputs['a'] = 1.0 is not expected"]
    assert differences(float("nan"), float("nan"), 1e-5) == []
    assert differences(True, 1, 1e-5) == []  # equal by value, compared without the tolerance


# ---------------------------------------------------------------- train jobs

def add_train_job(url: str, job_id: str = "train-1", status: str = "succeeded", epochs=(1, 2, 3),
                  with_version: bool = True, run_state: str = "done", error: str | None = None,
                  run_epoch: int | None = None) -> str:
    with session_scope(url) as session:
        version_id = None
        if with_version:
            version = ModelVersion(name=f"m-{job_id}", version=1, task="regression", input_height=32, input_width=32,
                                   resize_mode="stretch", pixel_scale="unit", target_transform={"kind": "none"},
                                   path="m.keras", sha256="0" * 64, size_bytes=1)
            session.add(version)
            session.flush()
            version_id = version.id
        session.add(Job(id=job_id, kind="train", status=status, model_ref="m", source={"type": "train"},
                        error=error))
        session.flush()
        session.add(TrainRun(job_id=job_id, model_name="m", spec={}, state=run_state, epochs_total=len(epochs),
                             epoch=max(epochs, default=0) if run_epoch is None else run_epoch,
                             result_version_id=version_id))
        session.add_all(TrainMetric(job_id=job_id, epoch=e, metrics={"loss": 1.0 / e}, seconds=1.0) for e in epochs)
    return job_id


def test_a_correct_train_job_has_no_violation(url):
    assert check_train_job(url, add_train_job(url)) == []


def test_a_train_job_still_running_is_caught(url):
    job = add_train_job(url, status="running", run_state="running", with_version=False)
    only(check_train_job(url, job), "not in a terminal state")


def test_a_gap_in_the_epoch_metrics_is_caught(url):
    job = add_train_job(url, epochs=(1, 3))
    only(check_train_job(url, job), "missing epochs [2] of 1..3")


def test_a_run_whose_epoch_disagrees_with_its_metrics_is_caught(url):
    job = add_train_job(url, run_epoch=4)
    only(check_train_job(url, job), "metrics go to epoch 3", "says 4")


def test_a_succeeded_train_job_needs_a_result_version_metrics_and_a_done_run(url):
    only(check_train_job(url, add_train_job(url, "t-a", with_version=False)), "without a result version")
    only(check_train_job(url, add_train_job(url, "t-b", epochs=())), "without any epoch metrics")
    only(check_train_job(url, add_train_job(url, "t-c", run_state="running")), "its run is 'running'")


def test_a_failed_train_job_must_say_why(url):
    only(check_train_job(url, add_train_job(url, "t-a", status="failed", run_state="failed", error="  ")),
         "failed without saying why")
    assert check_train_job(url, add_train_job(url, "t-b", status="failed", run_state="failed",
                                              error="the training process died")) == []


def test_an_unknown_train_job_is_a_violation(url):
    only(check_train_job(url, "nope"), "does not exist")
