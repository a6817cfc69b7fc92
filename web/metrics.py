"""Prometheus metrics read from the database at scrape time, so every web process reports the same truth."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from shared import liveness
from shared.db import session_scope
from shared.states import OPEN_JOB_STATUSES
from shared.tables import Chunk, Job


class QueueCollector:
    def collect(self):
        jobs = GaugeMetricFamily("imgq_jobs", "Jobs by kind and status", labels=["kind", "status"])
        chunks = GaugeMetricFamily("imgq_chunks", "Chunks of unfinished jobs by state", labels=["state"])
        items = GaugeMetricFamily("imgq_items_remaining", "Items not yet scored in running or queued jobs")
        swept = GaugeMetricFamily("imgq_sweeper_last_run_timestamp_seconds",
                                  "Unix time the sweeper last completed (0: never); alert when it stops moving")
        with session_scope() as s:
            last = liveness.last_beat(s, liveness.SWEEPER)
            swept.add_metric([], last.timestamp() if last is not None else 0.0)
            for kind, status, n in s.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)):
                jobs.add_metric([kind, status], n)
            for state, n in s.execute(select(Chunk.state, func.count()).join(Job, Job.id == Chunk.job_id)
                                      .where(Job.status.in_(OPEN_JOB_STATUSES)).group_by(Chunk.state)):
                chunks.add_metric([state], n)
            remaining = s.scalar(select(func.coalesce(func.sum(Job.total_items - Job.done_items), 0))
                                 .where(Job.status.in_(OPEN_JOB_STATUSES)))
            items.add_metric([], remaining or 0)
        yield from (jobs, chunks, items, swept)


registry = CollectorRegistry()
registry.register(QueueCollector())


def render() -> bytes:
    return generate_latest(registry)
