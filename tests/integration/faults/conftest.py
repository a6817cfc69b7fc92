"""Fixtures of the fault tests: private servers for the session, a fresh migrated database per test,
and the reliability report written when the session ends.

The servers belong to this session alone, so a test may stop, crash or restart them; the
function-scoped fixtures start them again first if a previous test left them down. Helpers live in
`tests/integration/faults/servers.py`, `report.py` and `checker.py`; import them from there, never from here.
"""
from __future__ import annotations

import shlex
import tempfile
import uuid

import pytest
import redis

from tests.integration.faults.report import FaultReport, spool_folder
from tests.integration.faults.servers import PrivatePostgres, PrivateRedis

MARKERS = (
    "faults: fault-injection tests under tests/integration/faults (private PostgreSQL and Redis servers they may kill)",
    "quick: needs no server and runs in seconds",
)


def pytest_configure(config):
    # Registered here as well as in pyproject.toml, so the folder runs warning-free on its own.
    registered = "\n".join(config.getini("markers"))
    for line in MARKERS:
        if line.split(":", 1)[0] + ":" not in registered:
            config.addinivalue_line("markers", line)


@pytest.fixture(scope="session")
def private_pg():
    """A PostgreSQL cluster of this session only, under /tmp (the postgres OS user cannot enter pytest's
    0700 temporary root). Removed, data and all, when the session ends."""
    server = PrivatePostgres(tempfile.mkdtemp(prefix="imgq-faults-pg-"))
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def private_redis():
    """A Redis without persistence of this session only; removed when the session ends."""
    server = PrivateRedis(tempfile.mkdtemp(prefix="imgq-faults-redis-"))
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def fault_db(private_pg):
    """The SQLAlchemy URL of a fresh database on `private_pg`, migrated to head; dropped afterwards."""
    from shared.core.db import engine_for
    from shared.core.migrate import upgrade

    if not private_pg.is_up():
        private_pg.start()
    name = f"faults_{uuid.uuid4().hex[:12]}"
    url = private_pg.create_database(name)
    upgrade(url)
    yield url
    engine_for(url).dispose()
    if private_pg.is_up():
        private_pg.drop_database(name)


@pytest.fixture
def fault_broker(private_redis):
    """The URL of database 0 of `private_redis`, running and empty."""
    if not private_redis.is_up():
        private_redis.resume()
        private_redis.restart()
    redis.Redis.from_url(private_redis.url(0)).flushall()
    return private_redis.url(0)


@pytest.fixture(scope="session", autouse=True)
def fault_report(request):
    """The session's FaultReport; written to docs/reliability.md at the end if a test recorded anything (under
    pytest-xdist: spooled for the controller, which writes every worker's rows as one file)."""
    report = FaultReport()
    yield report
    workerinput = getattr(request.config, "workerinput", None)
    if workerinput is not None:
        report.spool(spool_folder(workerinput["testrunuid"]), workerinput["workerid"])
        return
    args = request.config.invocation_params.args
    command = shlex.join([".venv/bin/python", "-m", "pytest", *args])
    path = report.write(command=command)
    if path is not None:
        terminal = request.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line(f"reliability report written to {path}")

