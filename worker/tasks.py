"""Celery tasks: thin wrappers over worker.run_chunk, worker.query_embedding, worker.sweeper,
worker.model_importer, worker.index_builder and worker.manifest_expansion.

This module is imported by the worker's main process, which forks the pool: it must not
import TensorFlow. Models are loaded in each pool process after the fork (worker_process_init).
The tasks run with the Settings the worker's entry point configured the app with (`configured_settings`);
their time limits come from there too (`shared.core.celery_app.configure`), never from an import.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import time

from celery.exceptions import Reject
from celery.signals import task_received, worker_process_init

from shared.core.celery_app import (
    BUILD_INDEX_TASK,
    EMBED_QUERY_TASK,
    IMPORT_MODEL_TASK,
    PREPARE_MANIFEST_TASK,
    SCHEDULE_TICK_TASK,
    SCORE_CHUNK_TASK,
    SWEEP_TASK,
    TRAIN_TASK,
    app,
    configured_settings,
)
from shared.core.dispatch import (
    enqueue_chunks,
    enqueue_imports,
    enqueue_index,
    enqueue_preparation,
    enqueue_train,
    queue_depth,
)
from shared.core.errors import ObjectStoreUnavailable
from worker import metrics, presence  # noqa: F401  (presence: its signal handlers report this worker)

log = logging.getLogger(__name__)
_models = None


def models():
    """The process's model cache, created on first use (after the fork)."""
    global _models
    if _models is None:
        from worker.model_cache import ModelCache

        _models = ModelCache(configured_settings().model_cache_size, settings=configured_settings())
    return _models


@worker_process_init.connect
def _preload_production_models(**_):
    """Load the production version of each model name at start, so the first job does not wait. This runs
    before the pool process reports ready; `worker_proc_alive_timeout` (IMGQ_WORKER_START_TIMEOUT) allows it."""
    settings = configured_settings()
    if not settings.preload:
        return
    from shared.core.db import session_scope
    from shared.services.model_registry import production_versions

    started = time.monotonic()
    try:
        with session_scope() as session:
            versions = production_versions(session)[: settings.model_cache_size]
        for v in versions:
            models().get(v)
    except Exception:  # a broken model must not keep the worker from starting
        log.exception("preloading production models failed; they will load on first use")
        return
    log.info("pool process %s preloaded %d production models in %.1f s", os.getpid(), len(versions),
             time.monotonic() - started)


@task_received.connect
def _mark_delivered(request=None, **_):
    """In the worker's main process, as a message is taken: record it, so a worker killed before
    the task starts does not leave its chunk or training waiting for the broker's visibility timeout."""
    if request is None or request.name not in (SCORE_CHUNK_TASK, TRAIN_TASK):
        return
    from shared.core.db import session_scope

    worker = request.hostname or socket.gethostname()
    try:
        with session_scope() as session:
            if request.name == SCORE_CHUNK_TASK:
                from worker.chunk_lifecycle import mark_delivered

                mark_delivered(session, *request.args, worker=worker)
            else:
                from worker.training.lifecycle import mark_delivered

                mark_delivered(session, *request.args, worker=worker)
    except Exception as exc:  # best effort: the sweeper's checks still cover a lost message
        from shared.core.db import is_outage

        if not is_outage(exc):
            log.exception("could not record the delivery of %s%s", request.name, request.args)
        else:
            log.warning("could not record the delivery of %s%s: database unavailable", request.name, request.args)


def requeue_on_outage(task):
    """A task that could not reach the database (or the object store, after its retries) did not do its work: its
    message goes back to the queue (after a pause, so an outage is not a busy loop) instead of being acknowledged as
    done."""
    @functools.wraps(task)
    def run(*args, **kwargs):
        from shared.core.db import is_outage

        try:
            return task(*args, **kwargs)
        except Exception as exc:
            if not (is_outage(exc) or isinstance(exc, ObjectStoreUnavailable)):
                raise
            what = "object store" if isinstance(exc, ObjectStoreUnavailable) else "database"
            log.warning("%s%s: %s unavailable (%s); message requeued", task.__name__, args[1:], what, exc)
            time.sleep(configured_settings().outage_retry_delay)
            raise Reject(exc, requeue=True) from exc
    return run


@app.task(name=SCORE_CHUNK_TASK, bind=True)
@requeue_on_outage
def score_chunk(self, job_id: str, chunk_no: int) -> str:
    from worker.run_chunk import run_chunk

    worker = f"{self.request.hostname or socket.gethostname()}:{os.getpid()}"
    return run_chunk(job_id, chunk_no, worker=worker, models=models(), settings=configured_settings())


@app.task(name=TRAIN_TASK, bind=True)  # its time limits: task_annotations (shared.core.celery_app.configure)
@requeue_on_outage
def train(self, job_id: str) -> str:
    from worker.training.supervise import run_train_job

    worker = f"{self.request.hostname or socket.gethostname()}:{os.getpid()}"
    return run_train_job(job_id, worker=worker, settings=configured_settings())


@app.task(name=IMPORT_MODEL_TASK, bind=True)
@requeue_on_outage
def import_model(self, job_id: str) -> str:
    """On the maintenance queue: the file is inspected in a subprocess, so this process loads no TensorFlow."""
    from worker.model_importer import run_import

    return run_import(job_id, configured_settings())


@app.task(name=BUILD_INDEX_TASK, bind=True)
@requeue_on_outage
def build_index(self, job_id: str) -> str:
    """On the maintenance queue: FAISS builds in native threads; this process loads no TensorFlow."""
    from worker.index_builder import run_index_job

    started = time.monotonic()
    result = run_index_job(job_id, configured_settings())
    metrics.INDEX_BUILD_SECONDS.labels(metrics.index_outcome(result)).observe(time.monotonic() - started)
    return result


@app.task(name=PREPARE_MANIFEST_TASK, bind=True)
@requeue_on_outage
def prepare_manifest(self, job_id: str) -> str:
    """On the maintenance queue: a preparing job's manifest read into items, then its chunks sent."""
    from worker.manifest_expansion import run_preparation

    return run_preparation(job_id, configured_settings())


# resultrepr_maxsize: Celery's "Task ... succeeded" log line and its task-succeeded event show the result's keys, never
# the vectors: "{'vectors': , ...}" (about 1.3 KB a query otherwise)
@app.task(name=EMBED_QUERY_TASK, ignore_result=False, resultrepr_maxsize=12)
def embed_query(space: str, images: list[dict], classifier: str | None) -> dict:
    """A similar-image query's images, embedded (and classified) by the models this process holds; the caller
    waits for the result (the only task whose result is kept)."""
    from worker.query_embedding import embed_images

    started = time.monotonic()
    answer = embed_images(space, images, classifier, models=models(), settings=configured_settings())
    metrics.QUERY_EMBED_SECONDS.observe(time.monotonic() - started)
    metrics.QUERY_IMAGES.inc(len(images))
    return answer


def skipped_on_outage(run, what: str, every: float):
    """run(), or None when the database is unreachable: a periodic task runs again in `every` seconds, so an
    outage is one warning per run, without a traceback, rather than an ERROR every time (a broken statement still
    raises)."""
    from shared.core.db import is_outage

    try:
        return run()
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("%s skipped: database unavailable (%s); the next one runs in %g s", what, type(exc).__name__,
                    every)
        return None


@app.task(name=SWEEP_TASK)
def sweep() -> dict | None:
    from worker.sweeper import sweep as run_sweep

    settings = configured_settings()
    return skipped_on_outage(
        lambda: run_sweep(settings, enqueue_chunks, enqueue_train, queue_depth, enqueue_imports, enqueue_index,
                          enqueue_preparation),
        "sweep", settings.sweep_interval)


@app.task(name=SCHEDULE_TICK_TASK)
def schedule_tick() -> dict | None:
    from shared.services.schedules import dispatch_due

    return skipped_on_outage(lambda: dispatch_due(enqueue_train), "schedule tick", configured_settings().schedule_tick)
