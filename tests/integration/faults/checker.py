"""A Jepsen-style checker: after the faults, read the database and list every broken invariant.

It only reads (one `session_scope` per call) and never trusts the job's own counters: they are
compared with the rows really there. A violation is a sentence naming the job and the item; an
empty list means the job is correct. The invariants are those the README promises:

- a job ends in exactly one terminal state (succeeded, failed, canceled);
- a succeeded score job has one result per item, no result outside its items, and no chunk left
  open; counters (done, failed, from cache) equal the result rows (more is a duplicate, fewer a loss);
- an item's outputs are those expected (within `tol`), and an item expected to fail has an error;
- a succeeded train job has a result version and metrics for epochs 1..N without gaps; a failed one
  says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from sqlalchemy import select

from shared.core.db import session_scope
from shared.core.tables import Chunk, Job, JobItem, ModelVersion, Result, TrainMetric, TrainRun

TERMINAL = ("succeeded", "failed", "canceled")
OPEN_CHUNK_STATES = ("pending", "queued", "delivered", "running")


@dataclass
class ScoreCheck:
    """What the checker found for one score job; `violations` empty means correct."""
    job_id: str
    status: str | None = None
    items: int = 0  # items expected
    results: int = 0  # result rows of the job
    lost: int = 0  # items of a succeeded job without a result
    duplicated: int = 0  # how far counters count past the rows
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def check_score_job(url: str, job_id: str, expected: dict[str, object | None], tol: float = 1e-5) -> list[str]:
    """Violations of a score job; `expected` maps every item id to its outputs, or None for an error."""
    return score_job_check(url, job_id, expected, tol).violations


def score_job_check(url: str, job_id: str, expected: dict[str, object | None], tol: float = 1e-5) -> ScoreCheck:
    """`check_score_job` with the counts a fault report needs (items, lost, duplicated)."""
    check = ScoreCheck(job_id, items=len(expected))
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        if job is None:
            check.violations.append(f"job {job_id} does not exist")
            check.lost = len(expected)
            return check
        check.status = job.status
        item_ids = set(session.scalars(select(JobItem.item_id).where(JobItem.job_id == job_id)))
        results = {r.item_id: r for r in session.scalars(select(Result).where(Result.job_id == job_id))}
        open_chunks = list(session.execute(select(Chunk.chunk_no, Chunk.state).where(
            Chunk.job_id == job_id, Chunk.state.in_(OPEN_CHUNK_STATES))))
        counters = {"done_items": job.done_items, "failed_items": job.failed_items,
                    "cached_items": job.cached_items, "total_items": job.total_items}
    check.results = len(results)
    _check_state(check, job.status, open_chunks)
    _check_membership(check, job.status, item_ids, set(expected), set(results))
    _check_counters(check, counters, results.values(), len(item_ids))
    _check_outputs(check, expected, results, tol)
    return check


def _check_state(check: ScoreCheck, status: str, open_chunks: list) -> None:
    if status not in TERMINAL:
        check.violations.append(f"job {check.job_id} is {status!r}, not in a terminal state {TERMINAL}")
    elif status == "succeeded" and open_chunks:
        shown = ", ".join(f"{no} {state}" for no, state in open_chunks[:5])
        check.violations.append(f"job {check.job_id} succeeded with {len(open_chunks)} chunks still open ({shown})")


def _check_membership(check: ScoreCheck, status: str, item_ids: set, expected_ids: set, result_ids: set) -> None:
    job = check.job_id
    for item in sorted(expected_ids - item_ids)[:20]:
        check.violations.append(f"job {job}: item {item!r} was submitted but is not among the job's items")
    for item in sorted(item_ids - expected_ids)[:20]:
        check.violations.append(f"job {job}: item {item!r} is among the job's items but was never submitted")
    for item in sorted(result_ids - item_ids)[:20]:
        check.violations.append(f"job {job}: a result for item {item!r}, which is not in the job")
    if status == "succeeded":
        missing = sorted(item_ids - result_ids)
        check.lost += len(missing)
        for item in missing[:20]:
            check.violations.append(f"job {job}: item {item!r} has no result although the job succeeded")
        if len(missing) > 20:
            check.violations.append(f"job {job}: ... and {len(missing) - 20} more items without a result")


def _check_counters(check: ScoreCheck, counters: dict, results, n_items: int) -> None:
    results = list(results)
    counted = {"done_items": len(results), "failed_items": sum(r.status == "error" for r in results),
               "cached_items": sum(bool(r.from_cache) for r in results), "total_items": n_items}
    for name, rows in counted.items():
        value = counters[name]
        if value == rows:
            continue
        if name == "done_items":
            check.duplicated += max(0, value - rows)
        what = "counts some rows twice (duplicated)" if value > rows else "misses rows that were written"
        check.violations.append(f"job {check.job_id}: jobs.{name} = {value} but the rows say {rows}: "
                                f"the counter {what}")


def _check_outputs(check: ScoreCheck, expected: dict, results: dict, tol: float) -> None:
    job = check.job_id
    for item, want in sorted(expected.items()):
        row = results.get(item)
        if row is None:
            continue
        if want is None:
            if row.status != "error":
                check.violations.append(f"job {job}: item {item!r} was expected to fail but is {row.status!r} "
                                        f"with outputs {row.outputs}")
        elif row.status != "ok":
            check.violations.append(f"job {job}: item {item!r} was expected to score but is {row.status!r}: "
                                    f"{row.error}")
        else:
            diffs = differences(row.outputs, want, tol)
            if diffs:
                check.violations.append(f"job {job}: item {item!r} outputs differ beyond tol {tol:g}: "
                                        + "; ".join(diffs[:5]))


def differences(got, want, tol: float, path: str = "outputs") -> list[str]:
    """Where `got` and `want` differ: numbers by more than tol * max(1, |a|, |b|) (absolute near zero,
    relative for large values such as page views), anything else by equality, dicts and lists in depth."""
    if _is_number(got) and _is_number(want):
        if math.isnan(got) and math.isnan(want):
            return []
        if abs(got - want) <= tol * max(1.0, abs(got), abs(want)):
            return []
        return [f"{path} = {got!r}, expected {want!r}"]
    if isinstance(got, dict) and isinstance(want, dict):
        found = [f"{path}[{k!r}] is missing" for k in sorted(set(want) - set(got))]
        found += [f"{path}[{k!r}] = {got[k]!r} is not expected" for k in sorted(set(got) - set(want))]
        for k in sorted(set(got) & set(want)):
            found += differences(got[k], want[k], tol, f"{path}[{k!r}]")
        return found
    if isinstance(got, (list, tuple)) and isinstance(want, (list, tuple)):
        if len(got) != len(want):
            return [f"{path} has {len(got)} values, expected {len(want)}"]
        return [d for i, (a, b) in enumerate(zip(got, want)) for d in differences(a, b, tol, f"{path}[{i}]")]
    return [] if got == want else [f"{path} = {got!r}, expected {want!r}"]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_train_job(url: str, job_id: str) -> list[str]:
    """Violations of a train job: terminal state; if succeeded a result version and epochs 1..N without
    gaps; if failed, a reason in jobs.error."""
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        if job is None:
            return [f"job {job_id} does not exist"]
        run = session.get(TrainRun, job_id)
        epochs = list(session.scalars(select(TrainMetric.epoch).where(TrainMetric.job_id == job_id)
                                      .order_by(TrainMetric.epoch)))
        version_exists = run is not None and run.result_version_id is not None and \
            session.get(ModelVersion, run.result_version_id) is not None
        status, error = job.status, job.error
        run_state = None if run is None else run.state
        run_epoch = None if run is None else run.epoch
        result_version_id = None if run is None else run.result_version_id
    if status not in TERMINAL:
        return [f"train job {job_id} is {status!r}, not in a terminal state {TERMINAL}"]
    if run is None:
        return [f"train job {job_id} has no train_runs row"]
    violations = []
    if status == "succeeded":
        if result_version_id is None:
            violations.append(f"train job {job_id} succeeded without a result version")
        elif not version_exists:
            violations.append(f"train job {job_id} names result version {result_version_id}, which does not exist")
        if run_state != "done":
            violations.append(f"train job {job_id} succeeded but its run is {run_state!r}, not 'done'")
        violations += _check_epochs(job_id, epochs, run_epoch)
    elif status == "failed" and not (error or "").strip():
        violations.append(f"train job {job_id} failed without saying why (jobs.error is empty)")
    return violations


def _check_epochs(job_id: str, epochs: list[int], run_epoch: int | None) -> list[str]:
    if not epochs:
        return [f"train job {job_id} succeeded without any epoch metrics"]
    last = max(epochs)
    violations = []
    gaps = sorted(set(range(1, last + 1)) - set(epochs))
    if gaps:
        violations.append(f"train job {job_id}: epoch metrics have gaps, missing epochs {gaps} of 1..{last}")
    extra = sorted(e for e in epochs if e < 1)
    if extra:
        violations.append(f"train job {job_id}: epoch metrics for epochs {extra}, numbered from 1")
    if run_epoch != last:
        violations.append(f"train job {job_id}: metrics go to epoch {last} but the run says {run_epoch} "
                          "epochs completed")
    return violations
