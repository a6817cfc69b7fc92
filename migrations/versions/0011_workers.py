"""workers: each worker process as it last reported itself (host, pid, role, queues, started, last seen)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 03:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'workers',
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('hostname', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('role', sa.String(length=20), nullable=False),
        sa.Column('queues', sa.JSON(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_index('ix_workers_last_seen_at', 'workers', ['last_seen_at'])


def downgrade() -> None:
    op.drop_index('ix_workers_last_seen_at', table_name='workers')
    op.drop_table('workers')
