"""worker.tasks: the periodic tasks (the sweep and the schedule tick) during a database outage, run through Celery's
tracer as a worker runs them, on settings whose PostgreSQL port nothing listens on (no server needed)."""
from __future__ import annotations

import logging
import socket

import pytest

from tests.helpers import configure_process


@pytest.fixture
def unreachable_database(monkeypatch, tmp_path):
    """Settings (and the database, and the Celery app) configured on a PostgreSQL URL whose port refuses connections:
    a socket holds it bound, never listening, for the length of the test."""
    from shared.core.config import get_settings

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        yield configure_process(monkeypatch, tmp_path, f"postgresql+psycopg://imgq@127.0.0.1:{port}/imgq")
    get_settings.cache_clear()


@pytest.mark.parametrize("name, what", [("sweep", "sweep"), ("schedule_tick", "schedule tick")])
def test_a_periodic_task_during_a_database_outage_logs_one_warning_and_no_error_or_traceback(
        unreachable_database, caplog, name, what):
    from worker import tasks

    with caplog.at_level(logging.DEBUG):
        outcome = getattr(tasks, name).apply()  # through Celery's tracer: a task that raises is logged as an ERROR
    assert outcome.successful() and outcome.result is None
    warnings = [r for r in caplog.records if r.name == "worker.tasks" and r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warnings] == [f"{what} skipped"]
    assert "database unavailable (OperationalError)" in warnings[0].getMessage()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r for r in caplog.records if r.exc_info or r.exc_text or r.stack_info] == []
