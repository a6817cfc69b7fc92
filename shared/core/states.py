"""The states of jobs, chunks and training runs: one vocabulary, stored as these strings.

Only the lifecycle code moves a row from one state to another: `worker/chunk_lifecycle.py` (chunks and score and
embed jobs), `worker/training/lifecycle.py` (training runs and train jobs), `shared/services/model_imports.py` and
`shared/services/index_jobs.py` (import and index jobs, claimed through `shared/services/single_task_jobs.py`; the
worker runs them and records every step through these), `shared/services/preparation.py` (score and embed jobs whose
large manifest the maintenance worker expands: preparing -> queued or failed), `shared/core/dispatch.py` (pending ->
queued when a message is sent) and `shared/services/jobs.cancel_job`. A transition that changes a job and its chunks
or run locks the job row first (`shared/services/jobs.lock_job`). Rows are created in their first state by the
functions that create them.

Members are `str`s, so they compare equal to the values read back from the database and serialise as them.
"""
from __future__ import annotations

from enum import Enum


class _State(str, Enum):
    def __str__(self) -> str:  # the stored value in messages and f-strings, not "JobStatus.QUEUED"
        return self.value


class JobKind(_State):
    """What a job does: score items, embed a catalog's items, build or extend a catalog's vector index, train a
    model, or import a model file."""
    SCORE = "score"
    EMBED = "embed"
    INDEX = "index"
    TRAIN = "train"
    IMPORT = "import"


class JobStatus(_State):
    """What a client sees: GET /api/v1/jobs/<id> -> status."""
    PREPARING = "preparing"  # a score or embed job whose manifest is being read into items, off the request thread
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class ChunkState(_State):
    """A few hundred items of a score job: the unit a worker takes, retries and heartbeats."""
    PENDING = "pending"  # committed, its message not (yet, or again) sent
    QUEUED = "queued"  # its message is on the broker
    DELIVERED = "delivered"  # a worker took the message; its silence is watched from now on
    RUNNING = "running"  # claimed by an attempt
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


class RunState(_State):
    """The training side of a train job; the same steps as a chunk."""
    PENDING = "pending"
    QUEUED = "queued"
    DELIVERED = "delivered"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


# Tuples, not sets: they go into SQL `IN (...)` lists, which should read the same every time.
CHUNKED_JOB_KINDS = (JobKind.SCORE, JobKind.EMBED)  # items in chunks through the decode-and-predict pipeline
FINAL_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
OPEN_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)  # its chunks, run or task may run
ACTIVE_JOB_STATUSES = (JobStatus.PREPARING, *OPEN_JOB_STATUSES)  # counted against a token's IMGQ_MAX_ACTIVE_JOBS
TERMINAL_CHUNK_STATES = (ChunkState.DONE, ChunkState.FAILED, ChunkState.CANCELED)
UNSENT_CHUNK_STATES = (ChunkState.PENDING, ChunkState.QUEUED)  # its message may be (re)sent or taken
TAKEN_CHUNK_STATES = (ChunkState.DELIVERED, ChunkState.RUNNING)  # a worker holds it: its heartbeat is watched
TERMINAL_RUN_STATES = (RunState.DONE, RunState.FAILED, RunState.CANCELED)
UNSENT_RUN_STATES = (RunState.PENDING, RunState.QUEUED)
TAKEN_RUN_STATES = (RunState.DELIVERED, RunState.RUNNING)
