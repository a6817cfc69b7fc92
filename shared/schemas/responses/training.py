"""Training's answers besides the train job itself: schedules (shared/services/schedules.py), sweeps
(shared/services/train_jobs.py) and the report of a dataset check (shared/images/datasets.check_dataset)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.core.states import JobStatus
from shared.images.datasets import DatasetSpec
from shared.schemas.responses.common import FreeForm, NextLink, Resource, Timestamp

Scalar = bool | int | float | str | None


class ScheduleRun(Resource):
    slot: Timestamp
    job_id: str | None
    decision: str | None = Field(description="promoted, kept, quarantined, or failed (the slot could not make its "
                                             "job); null while the job runs or when it failed for another reason")
    reason: str | None
    crawl_check: FreeForm | None = Field(description="the check of the slot's new rows (see a train job's crawl_check)")


class Schedule(Resource):
    id: int
    name: str
    cron: str
    timezone: str
    model: str
    enabled: bool
    train: FreeForm = Field(description="the train template as the client set it")
    gate: FreeForm | None
    next_slot: Timestamp
    runs: list[ScheduleRun] = Field(description="the latest 20 slots, newest first")


class SchedulesPage(Resource):
    schedules: list[Schedule]
    next: NextLink


class SweepRun(Resource):
    job_id: str
    status: JobStatus
    params: dict[str, Scalar] = Field(description="this job's grid point: setting path -> value")
    holdout_metrics: FreeForm | None
    version: str | None = Field(description="the version it registered (name@version)")


class Sweep(Resource):
    id: str
    grid: dict[str, list[Scalar]]
    created_at: Timestamp
    runs: list[SweepRun]


class SweepsPage(Resource):
    sweeps: list[Sweep]
    next: NextLink


# ------------------------------------------------------------------------------------------- dataset check

class Checked(Resource):
    stat: int
    decoded: int
    sample: int | None


class ItemProblem(Resource):
    item_id: str
    reason: str


class ProblemCount(Resource):
    count: int
    examples: list[ItemProblem]


class IdCount(Resource):
    count: int
    examples: list[str]


class SplitItem(Resource):
    item_id: str
    split: Literal["train", "validation", "holdout"]


class CrossSplitGroup(Resource):
    content_hash: str
    items: list[SplitItem]


class CrossSplit(Resource):
    count: int
    items: int
    examples: list[CrossSplitGroup]


class LabelledItem(Resource):
    item_id: str
    label: str


class LabelConflicts(Resource):
    count: int
    examples: list[list[LabelledItem]]


class Duplicates(Resource):
    hashed: int
    groups: int
    items: int
    examples: list[list[str]]
    cross_split: CrossSplit
    label_conflicts: LabelConflicts


class Spread(Resource):
    min: int
    p50: float | None
    max: int


class ImageSizes(Resource):
    width: Spread
    height: Spread


class TargetStats(Resource):
    count: int
    missing: int
    mean: float | None
    std: float | None
    min: float | None
    p50: float | None
    p95: float | None
    max: float | None
    skew: float | None
    log1p_advisable: bool
    why: str
    skew_after_log1p: float | None = None


class ClassShare(Resource):
    count: int
    fraction: float


class ClassBalance(Resource):
    count: int
    per_class: dict[str, ClassShare]
    imbalance_ratio: float | None
    largest: str | None
    smallest: str | None
    per_split: dict[str, dict[str, int]]


class SplitSize(Resource):
    count: int
    fraction: float
    expected_fraction: float


class DatasetReport(Resource):
    """POST /api/v1/datasets/check: what a human reads before training on a dataset."""
    path: str
    spec: DatasetSpec
    salt: str
    rows: int
    manifests: int
    checked: Checked
    missing_files: ProblemCount
    unreadable_images: ProblemCount
    duplicate_ids: IdCount
    duplicates: Duplicates
    image_sizes: ImageSizes | None
    targets: dict[str, TargetStats]
    classes: ClassBalance | None
    splits: dict[str, SplitSize]
    warnings: list[str]
