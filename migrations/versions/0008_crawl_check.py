"""train_runs.crawl_check: the report of a nightly increment's check before training on it (crawl_check.py)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('train_runs') as batch:
        batch.add_column(sa.Column('crawl_check', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('train_runs') as batch:
        batch.drop_column('crawl_check')
