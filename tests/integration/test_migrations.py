"""The Alembic migrations create exactly the tables the code declares, on PostgreSQL and SQLite."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared.core.db import engine_for
from shared.core.migrate import downgrade, upgrade
from shared.core.tables import Base


def test_upgrade_creates_every_table_and_matches_the_models(db_url):
    engine = engine_for(db_url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_up_again(db_url):
    downgrade(db_url, "base")
    engine = engine_for(db_url)
    assert not set(Base.metadata.tables) & set(inspect(engine).get_table_names())
    upgrade(db_url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
