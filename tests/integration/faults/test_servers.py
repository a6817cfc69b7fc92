"""The private servers behave as the fault tests assume: PostgreSQL keeps its data across a clean stop
and a crash-like one, Redis loses its keys on a restart, and a stopped server refuses connections."""
from __future__ import annotations

import os
import tempfile

import psycopg
import pytest
import redis

from tests.integration.faults.servers import PrivatePostgres, PrivateRedis, ServerError

pytestmark = pytest.mark.faults


@pytest.fixture
def own_pg():
    """A cluster of this test alone: stopping it cannot disturb the session's `private_pg`."""
    server = PrivatePostgres(tempfile.mkdtemp(prefix="imgq-faults-pg-"))
    try:
        yield server.start()
    finally:
        server.destroy()


def count_rows(server: PrivatePostgres, dbname: str) -> int:
    with psycopg.connect(server.dsn(dbname), connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_keeps_its_data_across_a_stop_and_start(own_pg, mode):
    url = own_pg.create_database("kept")
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{own_pg.port}/kept"
    with psycopg.connect(own_pg.dsn("kept")) as conn:
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
    port = own_pg.port
    own_pg.stop(mode=mode)
    assert not own_pg.is_up() and not own_pg.is_running()
    own_pg.start()
    assert own_pg.port == port and own_pg.is_up()
    assert count_rows(own_pg, "kept") == 100
    own_pg.restart(mode="immediate")
    assert count_rows(own_pg, "kept") == 100


def test_a_stopped_postgres_refuses_connections_and_stopping_twice_is_harmless(own_pg):
    own_pg.stop()
    own_pg.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(own_pg.dsn("postgres"), connect_timeout=2)


def test_the_session_postgres_serves_a_fresh_migrated_database(fault_db):
    from sqlalchemy import inspect

    from shared.core.db import engine_for

    assert fault_db.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    tables = set(inspect(engine_for(fault_db)).get_table_names())
    assert {"jobs", "job_items", "results", "chunks", "train_runs", "train_metrics"} <= tables


def test_redis_restart_keeps_the_port_and_loses_every_key(fault_broker, private_redis):
    client = redis.Redis.from_url(fault_broker)
    client.set("k", "v")
    port = private_redis.port
    private_redis.restart()
    assert private_redis.port == port and private_redis.is_up()
    assert redis.Redis.from_url(fault_broker).get("k") is None


def test_a_stopped_redis_refuses_connections(fault_broker, private_redis):
    private_redis.stop()
    assert not private_redis.is_up()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(fault_broker, socket_connect_timeout=1).ping()
    private_redis.start()
    assert redis.Redis.from_url(fault_broker).ping()


def test_a_paused_redis_times_out_and_answers_again_when_resumed(fault_broker, private_redis):
    private_redis.pause()
    try:
        with pytest.raises(redis.TimeoutError):
            redis.Redis.from_url(fault_broker, socket_timeout=0.5).ping()
    finally:
        private_redis.resume()
    assert redis.Redis.from_url(fault_broker, socket_timeout=5).ping()


def test_a_redis_that_cannot_start_says_why(tmp_path, private_redis):
    taken = PrivateRedis(tmp_path / "second", port=private_redis.port)  # the session's Redis holds the port
    if not private_redis.is_up():
        private_redis.start()
    with pytest.raises(ServerError, match="exited with code"):
        taken.start(timeout=10)
    assert taken.process is None


def test_a_postgres_that_cannot_start_says_why(private_pg):
    taken = PrivatePostgres(tempfile.mkdtemp(prefix="imgq-faults-pg-"), port=private_pg.port)
    try:
        with pytest.raises(ServerError, match="(?s)did not start.*could not bind"):
            taken.start(timeout=20)
    finally:
        taken.destroy()
    assert private_pg.is_up()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another OS user")
def test_a_folder_the_postgres_user_cannot_enter_is_refused_clearly(tmp_path):
    with pytest.raises(ServerError, match="cannot write"):
        PrivatePostgres(tmp_path / "pg").start()  # pytest's temporary root is 0700, owned by root
