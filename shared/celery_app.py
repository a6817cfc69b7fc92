"""The Celery application: broker, queues, durability settings and the beat schedule.

Both sides import it: the web front to enqueue by task name, workers to consume. It must
not import TensorFlow (workers fork their pool from this process).
"""
from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.config import Settings, ensure_dirs, settings

SCORE_QUEUE = "score"
TRAIN_QUEUE = "train"
MAINTENANCE_QUEUE = "maintenance"
SCORE_CHUNK_TASK = "imgq.score_chunk"
TRAIN_TASK = "imgq.train"
SWEEP_TASK = "imgq.sweep"
SCHEDULE_TICK_TASK = "imgq.schedule_tick"
IMPORT_MODEL_TASK = "imgq.import_model"


def make_celery(s: Settings) -> Celery:
    if s.embedded:
        ensure_dirs(s)
    app = Celery("imgq", broker=s.broker_url, include=["worker.tasks"])
    app.conf.update(
        broker_transport_options=s.broker_transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_queues=[Queue(SCORE_QUEUE), Queue(TRAIN_QUEUE), Queue(MAINTENANCE_QUEUE)],
        task_default_queue=SCORE_QUEUE,
        task_routes={SCORE_CHUNK_TASK: {"queue": SCORE_QUEUE}, TRAIN_TASK: {"queue": TRAIN_QUEUE},
                     SWEEP_TASK: {"queue": MAINTENANCE_QUEUE}, SCHEDULE_TICK_TASK: {"queue": MAINTENANCE_QUEUE},
                     IMPORT_MODEL_TASK: {"queue": MAINTENANCE_QUEUE}},
        # At-least-once delivery; idempotent writes make a second delivery harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A pool process loads TensorFlow and the production models before it reports ready (about 20 s
        # on a CPU); Celery's default of 4 s would kill and respawn it forever.
        worker_proc_alive_timeout=s.worker_start_timeout,
        task_ignore_result=True,  # job state lives in the database, not in a result backend
        task_soft_time_limit=int(s.heartbeat_timeout * 10),  # score chunks; training sets its own
        task_time_limit=int(s.heartbeat_timeout * 10) + 60,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        beat_schedule={
            "sweep": {"task": SWEEP_TASK, "schedule": s.sweep_interval,
                      "options": {"expires": s.sweep_interval * 2}},
            "schedules": {"task": SCHEDULE_TICK_TASK, "schedule": s.schedule_tick,
                          "options": {"expires": s.schedule_tick * 2}},
        },
    )
    return app


app = make_celery(settings())
