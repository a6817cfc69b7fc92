"""Engine and sessions; the one place that knows SQLite from PostgreSQL.

`session_scope()` opens a session on the database an entry point named with `configure(settings)` (the CLI's
commands, `web.app.create_app`, the training process); forked processes inherit it. Importing this module
connects nothing and reads no environment.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.core.config import Settings
from shared.core.errors import NotFound


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn):
            # Take the write lock up front: read-then-write transactions never fail half-way.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


_engines: dict[str, Engine] = {}


def engine_for(url: str) -> Engine:
    """One engine per URL in this process."""
    engine = _engines.get(url)
    if engine is None:
        engine = _engines.setdefault(url, make_engine(url))
    return engine


def _forget_inherited_connections() -> None:
    """In a forked child (a Celery pool process): the pooled connections belong to the parent; using them
    here would interleave two processes' transactions on one connection. SQLAlchemy's fork recipe."""
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def retry_on_outage(fn, *, within: float, pause: float = 1.0):
    """fn(), tried again every `pause` seconds while the database is unreachable, for up to `within`
    seconds; then the last error is raised."""
    deadline = time.monotonic() + within
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause)


_database_url: str | None = None


def configure(settings: Settings) -> None:
    """Make `settings.database_url` this process's database for `session_scope()` and `engine()`."""
    global _database_url
    _database_url = settings.database_url


def _configured_url() -> str:
    if _database_url is None:
        raise RuntimeError("the database is not configured: the entry point calls shared.core.db.configure(settings) "
                           "first")
    return _database_url


def engine() -> Engine:
    return engine_for(_configured_url())


@lru_cache(maxsize=4)
def _session_factory(url: str) -> sessionmaker:
    return sessionmaker(bind=engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session in one transaction on `url` or the configured database: committed on success, rolled back on
    error."""
    session = _session_factory(url or _configured_url())()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def is_outage(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (as opposed to a bad statement)."""
    return isinstance(exc, (OperationalError, InterfaceError)) or \
        (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def get_or_404(session: Session, table, key, what: str):
    """The row with primary key `key`, or NotFound("no <what> <key>")."""
    row = session.get(table, key)
    if row is None:
        raise NotFound(f"no {what} {key}")
    return row


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def insert_ignoring_conflicts(session: Session, table, rows: list[dict], keys: list[str]):
    """INSERT ... ON CONFLICT (keys) DO NOTHING RETURNING keys; returns the rows really inserted."""
    if not rows:
        return []
    if is_postgres(session):
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).on_conflict_do_nothing(index_elements=keys)
    # executemany with RETURNING ("insertmanyvalues") works on both dialects in SQLAlchemy 2;
    # rows skipped by the conflict clause are not returned.
    return list(session.execute(stmt.returning(*[table.c[k] for k in keys]), rows))


def ping(session: Session) -> None:
    """One round trip to the database (raises when it is unreachable)."""
    session.execute(text("SELECT 1"))
