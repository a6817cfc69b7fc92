"""The database tables. Alembic migrations (migrations/) create them; the app never calls create_all."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

MAX_INT32 = 2**31 - 1  # the largest value of an Integer column (INTEGER is 32 bits on PostgreSQL)
MAX_VERSION = MAX_INT32  # model_versions.version is a 32-bit INTEGER


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp that always reads back timezone-aware in UTC. imgq writes only UTC; SQLite keeps
    no zone and returns naive values, which would not compare with aware ones."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict: JSON, list: JSON}


class ModelVersion(Base):
    """One registered model file and the signature needed to feed it and read its outputs."""
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(20))  # regression | classification | keypoints
    input_height: Mapped[int] = mapped_column(Integer)
    input_width: Mapped[int] = mapped_column(Integer)
    resize_mode: Mapped[str] = mapped_column(String(20))  # stretch | letterbox
    pixel_scale: Mapped[str] = mapped_column(String(20))  # unit | raw | symmetric
    output_names: Mapped[list | None] = mapped_column(JSON, nullable=True)
    class_names: Mapped[list | None] = mapped_column(JSON, nullable=True)
    target_transform: Mapped[dict] = mapped_column(JSON)  # {"kind": "log1p"} etc.
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    lineage: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(Base):
    """A movable name such as `production` pointing at one version of a model name."""
    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    alias: Mapped[str] = mapped_column(String(50), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    # where the alias pointed before its last move: what a rollback returns to
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A client's credential: only the SHA-256 of the secret is stored; scopes say what it may do."""
    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("token_hash", name="uq_api_tokens_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),
                      Index("ix_jobs_token_status", "token_id", "status"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # score, train, import
    status: Mapped[str] = mapped_column(String(20))  # queued running succeeded failed canceled
    # score: the version used; train: the parent version (None when training an architecture from scratch)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    model_ref: Mapped[str] = mapped_column(String(120))  # what the client asked for
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[dict] = mapped_column(JSON)  # how items were given: upload, items, manifest
    # the folder under IMGQ_UPLOAD_DIR holding this job's uploaded files; the sweeper removes it after retention
    upload_folder: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", name="fk_jobs_token_id"),
                                                 nullable=True)  # who created it (None: auth off)
    use_cache: Mapped[bool] = mapped_column(Boolean, default=True)
    total_items: Mapped[int] = mapped_column(Integer, default=0)
    done_items: Mapped[int] = mapped_column(Integer, default=0)
    failed_items: Mapped[int] = mapped_column(Integer, default=0)
    cached_items: Mapped[int] = mapped_column(Integer, default=0)
    total_chunks: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # import and index jobs: when their task was last sent (the outbox; None: committed but not sent yet)
    enqueued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # what the job makes, for kinds whose request is more than a model and items: embed jobs {"catalog", "space",
    # "layer", "normalize"}; index jobs {"catalog", "space", "mode": build|delta, "params", ...}
    spec: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class JobItem(Base):
    """One image of a job, as submitted. `chunk_no` says which chunk scores it."""
    __tablename__ = "job_items"
    __table_args__ = (Index("ix_job_items_chunk", "job_id", "chunk_no"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(500), primary_key=True)
    uri: Mapped[str] = mapped_column(Text)
    chunk_no: Mapped[int] = mapped_column(Integer)
    category: Mapped[str | None] = mapped_column(String(200), nullable=True)  # embed jobs: the item's category


class Chunk(Base):
    """A few hundred items scored by one task; the unit of delivery, retry and heartbeat."""
    __tablename__ = "chunks"
    __table_args__ = (Index("ix_chunks_state", "state"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    chunk_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(20))  # pending queued running done failed canceled
    item_count: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Isolation (attempts beyond max_attempts): the item being scored alone right now, and how many
    # workers died in a row while it was; see chunk_lifecycle.record_death.
    suspect_item: Mapped[str | None] = mapped_column(String(500), nullable=True)
    suspect_deaths: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Result(Base):
    """The outcome for one item of one job: outputs, or the reason it failed. Written by upsert."""
    __tablename__ = "results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(500), primary_key=True)
    status: Mapped[str] = mapped_column(String(10))  # ok | error
    outputs: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    from_cache: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScoreCache(Base):
    """Outputs of a model version for an image's content, so repeated photos are not scored twice."""
    __tablename__ = "score_cache"

    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    outputs: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainRun(Base):
    """The training side of a job of kind 'train': its request, claim state, progress and outcome."""
    __tablename__ = "train_runs"
    __table_args__ = (Index("ix_train_runs_state", "state"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(100))
    spec: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20))  # pending queued running done failed canceled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # epochs completed
    epochs_total: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    steps_per_epoch: Mapped[int] = mapped_column(Integer, default=0)
    phase: Mapped[str | None] = mapped_column(String(40), nullable=True)  # loading data, training, evaluating...
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    checkpoint_epoch: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    resumed_from_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data_stats: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    result_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    holdout_metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    comparison: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # vs production, shadow diff, gate
    crawl_check: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the increment's check before training
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id"), nullable=True)
    schedule_run_id: Mapped[int | None] = mapped_column(ForeignKey("schedule_runs.id"), nullable=True)


class TrainMetric(Base):
    """Metrics of one finished epoch; (job, epoch) is unique, so a resumed run rewrites, never duplicates."""
    __tablename__ = "train_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    metrics: Mapped[dict] = mapped_column(JSON)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sweep(Base):
    """A grid of train jobs over one base request (their train runs name it), made by one request: its token (also
    recorded on each job) and its Idempotency-Key, which names the sweep as a job's key names the job."""
    __tablename__ = "sweeps"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_sweeps_idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    base: Mapped[dict] = mapped_column(JSON)
    grid: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", name="fk_sweeps_token_id"),
                                                 nullable=True)  # who created it (None: auth off)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Schedule(Base):
    """A recurring fine-tune: when (cron + time zone), on what data, how, and when to promote."""
    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    cron: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(100))
    train: Mapped[dict] = mapped_column(JSON)  # a train request; dataset paths may hold {date} patterns
    gate: Mapped[dict] = mapped_column(JSON)  # {"metric": ..., "min_improvement": ...}
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MaintenanceBeat(Base):
    """When a maintenance loop (the sweeper) last finished, so /readyz and /metrics can tell it stopped."""
    __tablename__ = "maintenance_beats"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    last_at: Mapped[datetime] = mapped_column()
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class WorkerProcess(Base):
    """A worker process as it last reported itself (worker/presence.py), kept after it stops so the operations page
    can show when each was last seen; `name` is its Celery node name (role, pid and host: unique while it runs)."""
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(20))
    queues: Mapped[list] = mapped_column()
    started_at: Mapped[datetime] = mapped_column()
    last_seen_at: Mapped[datetime] = mapped_column(index=True)


class ScheduleRun(Base):
    """One slot of a schedule. The unique (schedule, slot) makes a slot run once, whatever beat does."""
    __tablename__ = "schedule_runs"
    __table_args__ = (UniqueConstraint("schedule_id", "slot_at", name="uq_schedule_runs_slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    slot_at: Mapped[datetime] = mapped_column()
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    decision: Mapped[str | None] = mapped_column(String(20), nullable=True)  # promoted | kept | quarantined | failed
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Embedding(Base):
    """One catalog item's vector in one embedding space (a model version, the layer read, and whether vectors are
    L2-normalised: `space` names all three, e.g. "catalog-embedder@3" or "category-model@2#dense_1"). The latest
    embed job to reach an item wins; `deleted_at` hides an item from answers at once and the next index build
    leaves it out."""
    __tablename__ = "embeddings"
    __table_args__ = (Index("ix_embeddings_space_hash", "space", "content_hash"),
                      Index("ix_embeddings_catalog_space_created", "catalog", "space", "created_at"))

    catalog: Mapped[str] = mapped_column(String(100), primary_key=True)
    space: Mapped[str] = mapped_column(String(300), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(500), primary_key=True)
    category: Mapped[str | None] = mapped_column(String(200), nullable=True)
    uri: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, `dim` values
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)  # the embed job that wrote it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)


class VectorIndex(Base):
    """One built version of a catalog's index in one embedding space: files in the model store, what built it.
    The highest version of a (catalog, space) is the one queries use."""
    __tablename__ = "vector_indexes"
    __table_args__ = (UniqueConstraint("catalog", "space", "version", name="uq_vector_indexes_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    catalog: Mapped[str] = mapped_column(String(100))
    space: Mapped[str] = mapped_column(String(300))
    version: Mapped[int] = mapped_column(Integer)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))  # the version that embeds queries
    mode: Mapped[str] = mapped_column(String(10))  # build | delta
    base_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # delta: the version it extends
    params: Mapped[dict] = mapped_column(JSON)  # build parameters and what each category's sub-index became
    dim: Mapped[int] = mapped_column(Integer)
    item_count: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # folder in the model store (index files, item ids, categories)
    watermark: Mapped[datetime] = mapped_column()  # embeddings written up to here are in it
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DriftReference(Base):
    """What a version's outputs look like on data like its training data (shared/models/drift.py's summary): the
    reference its score jobs' drift is measured against. Written once, when a trained version is registered."""
    __tablename__ = "drift_references"

    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"),
                                                  primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # training: the outputs on its validation and holdout images
    item_count: Mapped[int] = mapped_column(Integer)
    distribution: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScoreDrift(Base):
    """A finished score job's output distribution and its drift against a reference (None: none to compare with).
    Written once per job, when it succeeds."""
    __tablename__ = "score_drift"
    __table_args__ = (Index("ix_score_drift_version_computed", "model_version_id", "computed_at"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    reference_kind: Mapped[str | None] = mapped_column(String(20), nullable=True)  # training | previous_job
    reference_job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)  # previous_job: which one
    statistic: Mapped[str] = mapped_column(String(10))  # psi
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float] = mapped_column(Float)
    exceeded: Mapped[bool] = mapped_column(Boolean, default=False)
    item_count: Mapped[int] = mapped_column(Integer)
    distribution: Mapped[dict] = mapped_column(JSON)
    detail: Mapped[dict] = mapped_column(JSON)  # per output: PSI, KS, shares or quantiles, and the reference's
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Upload(Base):
    """A folder of files sent in parts (POST /api/v1/uploads, then /files as often as needed), under IMGQ_UPLOAD_DIR
    in the folder named by its id; a score or embed job that names it takes its files as items and the folder with
    them (`job_id`: used once, then the job's retention removes it)."""
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex, also its folder's name
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", name="fk_uploads_token_id"),
                                                 nullable=True)  # who made it (None: auth off, or the CLI)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)  # the job that took its files
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)  # the last part added: the sweeper's idle clock


class UploadFile(Base):
    """One file of an upload: its name (the item id, unique in the upload), where it is stored and its hash (a part
    sent again adds nothing; the same name with other bytes is refused)."""
    __tablename__ = "upload_files"

    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(500), primary_key=True)
    stored: Mapped[str] = mapped_column(String(200))  # the file's name inside the upload's folder
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class ResultExport(Base):
    """Where a score or embed job's results are written when it succeeds (its `export` option), and how that went:
    pending (not written yet, or to be tried again: `error` says why), writing (a process holds it: `updated_at` is
    its lease), written (`rows` results) or failed (the store refused it for good: a 403, a bad bucket). Written with
    the job; changed by shared/services/job_exports."""
    __tablename__ = "result_exports"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    uri: Mapped[str] = mapped_column(String(1100))
    status: Mapped[str] = mapped_column(String(20), index=True)
    rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    tries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
