"""Prometheus metrics read from the database at scrape time, so every web process reports the same truth."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from shared.core import liveness
from shared.core.db import session_scope
from shared.services import jobs


class QueueCollector:
    def collect(self):
        job_counts = GaugeMetricFamily("imgq_jobs", "Jobs by kind and status", labels=["kind", "status"])
        chunks = GaugeMetricFamily("imgq_chunks", "Chunks of unfinished jobs by state", labels=["state"])
        items = GaugeMetricFamily("imgq_items_remaining", "Items not yet scored in running or queued jobs")
        swept = GaugeMetricFamily("imgq_sweeper_last_run_timestamp_seconds",
                                  "Unix time the sweeper last completed (0: never); alert when it stops moving")
        with session_scope() as session:
            last = liveness.last_beat(session, liveness.SWEEPER)
            figures = jobs.queue_figures(session)
        swept.add_metric([], last.timestamp() if last is not None else 0.0)
        for (kind, status), n in figures["jobs"].items():
            job_counts.add_metric([kind, status], n)
        for state, n in figures["chunks"].items():
            chunks.add_metric([state], n)
        items.add_metric([], figures["items_remaining"])
        yield from (job_counts, chunks, items, swept)


registry = CollectorRegistry()
registry.register(QueueCollector())


def render() -> bytes:
    return generate_latest(registry)
