"""Prometheus metrics of the web front: the queue figures, read from the database at scrape time so every web process
reports the same truth, and each request's duration by route, method and status, which gunicorn's workers write to
their tree's multiprocess folder (shared/core/prometheus.py) so that whichever worker answers /metrics answers for
all. Labels are bounded: the Flask endpoint name (never the URL), a known method or "other", the status code."""
from __future__ import annotations

import logging
import threading

from prometheus_client import Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from shared.core import liveness, prometheus
from shared.core.db import session_scope
from shared.services import drift, jobs

log = logging.getLogger(__name__)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_SECONDS = Histogram("imgq_http_request_duration_seconds", "HTTP requests by route (the Flask endpoint name; "
                            "unmatched for a URL no route serves), method and status code",
                            ["route", "method", "status"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    REQUEST_SECONDS.labels(route, method_label(method), status).observe(seconds)


class QueueCollector:
    def describe(self):
        return self._families()

    @staticmethod
    def _families():
        return (GaugeMetricFamily("imgq_jobs", "Jobs by kind and status", labels=["kind", "status"]),
                GaugeMetricFamily("imgq_chunks", "Chunks of unfinished jobs by state", labels=["state"]),
                GaugeMetricFamily("imgq_items_remaining", "Items not yet scored in running or queued jobs"),
                GaugeMetricFamily("imgq_sweeper_last_run_timestamp_seconds",
                                  "Unix time the sweeper last completed (0: never); alert when it stops moving"),
                GaugeMetricFamily("imgq_score_drift", "Output drift (PSI) of each model's latest finished score job "
                                  "against its reference; IMGQ_DRIFT_THRESHOLD flags it", labels=["model"]))

    def collect(self):
        """The figures from the database; a database that does not answer leaves them out of this scrape (the
        request counters are still served, and /readyz says what is wrong)."""
        job_counts, chunks, items, swept, drifts = self._families()
        try:
            with session_scope() as session:
                last = liveness.last_beat(session, liveness.SWEEPER)
                figures = jobs.queue_figures(session)
                latest_drift = drift.latest_by_model(session)
        except Exception as exc:  # noqa: BLE001 - a scrape must answer with what it has
            log.warning("database figures left out of /metrics: %s", type(exc).__name__)
            return
        swept.add_metric([], last.timestamp() if last is not None else 0.0)
        for (kind, status), n in figures["jobs"].items():
            job_counts.add_metric([kind, status], n)
        for state, n in figures["chunks"].items():
            chunks.add_metric([state], n)
        items.add_metric([], figures["items_remaining"])
        for model, value in latest_drift:
            drifts.add_metric([model], value)
        yield from (job_counts, chunks, items, swept, drifts)


_registry = None
_registry_lock = threading.Lock()


def render() -> bytes:
    global _registry
    with _registry_lock:
        if _registry is None:  # once per process: outside multiprocess mode the collector joins the default registry
            _registry = prometheus.registry(QueueCollector())
    return generate_latest(_registry)
