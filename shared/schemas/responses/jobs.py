"""Jobs as GET /api/v1/jobs/<id> describes them (shared/services/jobs.job_json), one model per kind joined on `kind`;
lists of jobs, a job's results, and a train job's epochs.

Every kind shares id, kind, status, timings, source, error and links; score and embed jobs add their model, item
progress, chunks and cache (embed jobs their embedding space too), train jobs their training's model, progress, data
and outcome, import jobs the model file and its result, index jobs the index they build.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, RootModel, create_model

from shared.core.states import ChunkState, JobStatus
from shared.core.vocab import ResultStatus, Task
from shared.schemas.responses.catalogs import IndexVersion
from shared.schemas.responses.common import FreeForm, NextLink, Resource, Timestamp


class Timings(Resource):
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    last_heartbeat_at: Timestamp | None
    seconds_since_heartbeat: float | None = Field(description="a dead job shows here: its heartbeat stopped")
    elapsed_seconds: float | None


class JobLinks(Resource):
    self: str
    cancel: str


class ItemJobLinks(JobLinks):
    results: str


class TrainJobLinks(JobLinks):
    epochs: str
    metrics: str = Field(description="deprecated: the old path of `epochs`, for one more release")


class ImportJobLinks(JobLinks):
    version: str | None = Field(default=None, description="the version the import made, once it succeeded")


class JobBase(Resource):
    id: str
    status: JobStatus
    timings: Timings
    source: FreeForm = Field(description="where the job's work came from: `type` (items, manifest, upload, train, "
                                         "import, index...) and what that type records")
    error: str | None = Field(description="why the job as a whole failed")


class ScoredModel(Resource):
    requested: str = Field(description="the reference as the request gave it (pageviews, pageviews@production)")
    ref: str = Field(description="the version it resolved to: name@version")
    task: Task


class ItemProgress(Resource):
    total: int = Field(description="the job's items; 0 while it is `preparing` (its manifest is still being read)")
    done: int = Field(description="finished items, scored or failed")
    succeeded: int
    failed: int
    from_cache: int
    remaining: int
    percent: float
    images_per_second: float | None
    eta_seconds: float | None
    rows_read: int = Field(description="items read from the request or manifest so far: while the job is "
                                       "`preparing`, how far the maintenance worker has read its manifest; then "
                                       "equal to `total`")


Chunks = create_model("Chunks", __base__=Resource, __module__=__name__,
                      __doc__="How many of the job's chunks are in each state.",
                      total=(int, ...), **{state.value: (int, ...) for state in ChunkState})


class Export(Resource):
    """Where the job's results are exported when it succeeds (its `export` option), and how that went."""
    uri: str
    status: Literal["pending", "writing", "written", "failed"] = Field(
        description="pending: not written yet (or the store was away: tried again by each sweep); writing: a "
                    "process is writing it now; written; failed: the store refused it for good (no such bucket, "
                    "access denied)")
    rows: int | None = Field(description="results written, once written")
    error: str | None = Field(description="why the last try did not write it")
    tries: int
    updated_at: Timestamp


class ScoreJob(JobBase):
    kind: Literal["score"]
    links: ItemJobLinks
    model: ScoredModel
    progress: ItemProgress
    chunks: Chunks
    cache: bool
    drift: FreeForm | None = Field(None, description="a score job's output distribution against its reference (the "
                                   "training data, or the version's previous job): statistic, value, threshold, "
                                   "exceeded, per-output detail; null until the job finished (embed jobs: absent)")
    export: Export | None = Field(None, description="absent when the job was submitted without `export`")


class Embedding(Resource):
    """Where an embed job's vectors go; `dim` once a worker has built the embedder."""
    catalog: str | None
    space: str | None
    layer: str | None
    normalize: bool | None
    dim: int | None


class EmbedJob(ScoreJob):
    kind: Literal["embed"]
    embedding: Embedding


class TrainedModel(Resource):
    name: str
    parent: str | None = Field(description="the version fine-tuned (name@version), null for an architecture")
    result: str | None = Field(description="the version the training registered (name@version)")
    task: str


class TrainProgress(Resource):
    phase: str | None
    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    eta_seconds: float | None
    checkpoint_epoch: int
    resumed_from_epoch: int | None
    attempts: int


class TrainJob(JobBase):
    kind: Literal["train"]
    links: TrainJobLinks
    model: TrainedModel
    progress: TrainProgress
    data: FreeForm | None = Field(description="what the training read: item counts per split, skipped rows...")
    holdout_metrics: FreeForm | None = Field(description="the new version's metrics on the holdout")
    comparison: FreeForm | None = Field(description="the gate's decision (paired test, guards, reason) and the shadow "
                                        "diff against production")
    crawl_check: FreeForm | None = Field(description="the check of a night's new rows before training on them: each "
                                         "check's figures and verdict, and whether the crawl was quarantined")
    sweep_id: str | None
    request: FreeForm = Field(description="the train request as stored (a TrainRequest, base.version pinned)")


class ImportedModel(Resource):
    name: str | None
    file: str | None = Field(description="the file's name as it was uploaded")
    result: str | None = Field(description="the version registered (name@version), once the job succeeded")
    task: Task | None


class ImportProgress(Resource):
    total: int
    done: int
    succeeded: int
    failed: int
    remaining: int
    percent: float
    phase: Literal["waiting", "inspecting", "done"]


class ImportJob(JobBase):
    kind: Literal["import"]
    links: ImportJobLinks
    model: ImportedModel
    progress: ImportProgress


class IndexBuild(Resource):
    catalog: str | None
    space: str | None
    mode: str | None
    base_version: int | None
    params: FreeForm | None = Field(description="the build parameters (kind, exact_below, nlist, ef_search...)")
    version: int | None = Field(description="the index version the job registered, once it succeeded")
    built: IndexVersion | None


class IndexProgress(Resource):
    total: int
    done: int
    percent: float


class IndexJob(JobBase):
    kind: Literal["index"]
    links: JobLinks
    index: IndexBuild
    progress: IndexProgress


class Job(RootModel[Annotated[ScoreJob | EmbedJob | TrainJob | ImportJob | IndexJob, Field(discriminator="kind")]]):
    """A job of any kind; `kind` says which."""


class JobsPage(Resource):
    jobs: list[Job]
    next: NextLink


Output = float | int | str | bool | None


class Result(Resource):
    id: str = Field(description="the item id")
    status: ResultStatus
    outputs: dict[str, Output] | None = Field(description="named outputs in the units the model's signature gives "
                                                          "(an embed job: the vector's dim)")
    error: str | None = Field(description="why the item has no outputs")
    from_cache: bool | None
    content_hash: str | None
    category: str | None = Field(default=None, description="embed jobs: the item's category")


class ResultsPage(Resource):
    job_id: str
    results: list[Result]
    next: NextLink


class Epochs(Resource):
    job_id: str
    status: JobStatus
    epochs: list[dict[str, float | int | None]] = Field(description="per finished epoch: epoch, the loss and the "
                                                                    "task's metric (also on validation), seconds")
    progress: TrainProgress
