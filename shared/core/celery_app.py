"""The Celery application: queues, task names, durability settings; broker, limits and beat schedule from Settings.

Both sides import it: the web front to enqueue by task name, workers to consume. Importing it reads no
environment, connects nothing and creates no folder: the `app` it defines knows only what is the same
everywhere. Every process that sends or runs tasks calls `configure(settings)` first (the CLI's commands,
`web.app.create_app`), before a worker starts (Celery reads the task limits when the app finalizes); forked pool
processes and the embedded beat inherit the configuration. It must not import TensorFlow (workers fork their
pool from this process).
"""
from __future__ import annotations

import threading

from celery import Celery
from kombu import Queue

from shared.core import fs_broker
from shared.core.config import Settings

SCORE_QUEUE = "score"
TRAIN_QUEUE = "train"
MAINTENANCE_QUEUE = "maintenance"
QUERY_QUEUE = "queries"  # image queries of similar-image search, embedded by a worker while a client waits
SCORE_CHUNK_TASK = "imgq.score_chunk"
TRAIN_TASK = "imgq.train"
SWEEP_TASK = "imgq.sweep"
SCHEDULE_TICK_TASK = "imgq.schedule_tick"
IMPORT_MODEL_TASK = "imgq.import_model"
BUILD_INDEX_TASK = "imgq.build_index"
PREPARE_MANIFEST_TASK = "imgq.prepare_manifest"
EMBED_QUERY_TASK = "imgq.embed_query"

app = Celery("imgq", include=["worker.tasks"])
app.conf.update(
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    task_queues=[Queue(SCORE_QUEUE), Queue(TRAIN_QUEUE), Queue(MAINTENANCE_QUEUE), Queue(QUERY_QUEUE)],
    task_default_queue=SCORE_QUEUE,
    task_routes={SCORE_CHUNK_TASK: {"queue": SCORE_QUEUE}, TRAIN_TASK: {"queue": TRAIN_QUEUE},
                 SWEEP_TASK: {"queue": MAINTENANCE_QUEUE}, SCHEDULE_TICK_TASK: {"queue": MAINTENANCE_QUEUE},
                 IMPORT_MODEL_TASK: {"queue": MAINTENANCE_QUEUE}, BUILD_INDEX_TASK: {"queue": MAINTENANCE_QUEUE},
                 PREPARE_MANIFEST_TASK: {"queue": MAINTENANCE_QUEUE},
                 EMBED_QUERY_TASK: {"queue": QUERY_QUEUE}},
    # At-least-once delivery; idempotent writes make a second delivery harmless.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,  # job state lives in the database; only query tasks keep a result (result_backend)
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,  # imgq configures logging (worker/task_logs.py, shared/core/logs.py)
    # Task events (sent, received, started, succeeded...), so Flower and `celery events` follow the tasks without
    # broadcasting `enable_events` to the workers themselves.
    worker_send_task_events=True,
    task_send_sent_event=True,
)

_settings: Settings | None = None


def configure(settings: Settings) -> Celery:
    """Point `app` at the broker of `settings` and apply its limits and timers; returns `app`. The broker's
    folders of the embedded default must exist (`shared.core.config.ensure_dirs`, the entry point's job)."""
    global _settings
    _settings = settings
    if settings.embedded:
        fs_broker.install()  # exchange tables created whole: processes starting together never read a half-made one
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=settings.broker_transport_options,
        result_backend=settings.result_backend,
        result_backend_transport_options={k: v for k, v in settings.broker_transport_options.items()
                                          if k == "global_keyprefix"},
        result_expires=3600,
        # A pool process loads TensorFlow and the production models before it reports ready (about 20 s
        # on a CPU); Celery's default of 4 s would kill and respawn it forever.
        worker_proc_alive_timeout=settings.worker_start_timeout,
        task_soft_time_limit=int(settings.heartbeat_timeout * 10),  # score chunks; training has its own, below
        task_time_limit=int(settings.heartbeat_timeout * 10) + 60,
        task_annotations={TRAIN_TASK: {"soft_time_limit": settings.max_train_seconds + 60,
                                       "time_limit": settings.max_train_seconds + 120}},
        beat_schedule={
            "sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval,
                      "options": {"expires": settings.sweep_interval * 2}},
            "schedules": {"task": SCHEDULE_TICK_TASK, "schedule": settings.schedule_tick,
                          "options": {"expires": settings.schedule_tick * 2}},
        },
    )
    # Configured again in one process (the tests): the next send connects to the new broker, not a pooled
    # connection to the previous one. Celery resets the same two pools after a fork.
    app._pool = None
    app._backend_cache = None  # and the next result read asks the new result backend
    app._local = threading.local()
    if "amqp" in app.__dict__:
        app.amqp._producer_pool = None
    return app


def configured_settings() -> Settings:
    """The Settings this process's app was configured with: the tasks run with them."""
    if _settings is None:
        raise RuntimeError("the Celery app is not configured: the entry point calls "
                           "shared.core.celery_app.configure(settings) first")
    return _settings
