"""Each worker process's report of itself (its row in `workers`, shared/services/workers.py): once when Celery says
the worker is ready, then on a heartbeat thread (worker/heartbeat.py) every quarter of IMGQ_HEARTBEAT_TIMEOUT (at
most REPORT_AT_MOST seconds), until the worker shuts down. Connected by worker/tasks.py, which every worker and
maintenance process imports.

Invariants: the report runs in the worker's main process (Celery's worker_ready and worker_shutdown signals), never
in a pool process, so a worker is one row whatever its concurrency; a report that fails (the database is away) is
logged and retried at the next beat, and never stops the worker; the role is read from the queues it consumes.
"""
from __future__ import annotations

import logging
import os
import socket

from celery.signals import worker_ready, worker_shutdown

from shared.core.celery_app import MAINTENANCE_QUEUE, configured_settings
from shared.core.db import session_scope
from shared.core.tables import utcnow
from shared.services.workers import record_worker
from worker.heartbeat import Heartbeat, interval_for

log = logging.getLogger(__name__)
REPORT_AT_MOST = 30.0  # seconds between reports
_reporter: Heartbeat | None = None


def identity(consumer) -> dict:
    """Who this process is, from the Celery consumer that became ready: node name, host, pid, queues, role."""
    queues = sorted(consumer.app.amqp.queues.consume_from or consumer.app.amqp.queues)
    return {"name": consumer.hostname, "hostname": socket.gethostname(), "pid": os.getpid(), "queues": queues,
            "role": "maintenance" if MAINTENANCE_QUEUE in queues else "worker", "started_at": utcnow()}


def report(me: dict) -> None:
    with session_scope() as session:
        record_worker(session, **me, at=utcnow())


@worker_ready.connect
def _start_reporting(sender=None, **_):
    global _reporter
    me = identity(sender)
    try:
        report(me)
    except Exception:  # the database is away: the heartbeat tries again
        log.warning("worker %s: reporting itself failed; the next beat tries again", me["name"], exc_info=True)
    interval = interval_for(configured_settings().heartbeat_timeout, at_most=REPORT_AT_MOST)
    _reporter = Heartbeat(lambda: report(me), interval, label=f"worker {me['name']}", name="imgq-presence").start()
    log.info("worker %s (%s, queues %s) reports itself every %.1f s", me["name"], me["role"],
             ",".join(me["queues"]), interval)


@worker_shutdown.connect
def _stop_reporting(**_):
    if _reporter is not None:
        _reporter.stop()
