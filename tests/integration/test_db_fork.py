"""A forked process (a Celery pool process) never uses the connections its parent pooled."""
import os

from sqlalchemy import text

from shared.core.db import engine_for, retry_on_outage


def test_a_forked_child_opens_its_own_postgres_connection(pg_url):
    engine = engine_for(pg_url)
    with engine.connect() as conn:  # the parent pools a connection
        parent_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            with engine.connect() as conn:
                os.write(write, str(conn.execute(text("SELECT pg_backend_pid()")).scalar()).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_pid = int(os.read(read, 100).decode())
    os.waitpid(child, 0)
    assert child_pid != parent_pid
    with engine.connect() as conn:  # and the parent's own connection still works
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == parent_pid


def test_retry_on_outage_waits_out_an_outage_but_not_a_bug():
    from sqlalchemy.exc import OperationalError

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return "ok"

    assert retry_on_outage(flaky, within=5, pause=0.01) == "ok" and len(calls) == 3
    try:
        retry_on_outage(lambda: 1 / 0, within=5, pause=0.01)
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("a bug was retried")
