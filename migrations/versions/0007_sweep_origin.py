"""sweeps: the token that created a sweep and the Idempotency-Key (with its request's fingerprint) that names it

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sweeps') as batch:
        batch.add_column(sa.Column('token_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('idempotency_key', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('request_fingerprint', sa.String(length=64), nullable=True))
        batch.create_foreign_key('fk_sweeps_token_id', 'api_tokens', ['token_id'], ['id'])
        batch.create_unique_constraint('uq_sweeps_idempotency_key', ['idempotency_key'])


def downgrade() -> None:
    with op.batch_alter_table('sweeps') as batch:
        batch.drop_constraint('uq_sweeps_idempotency_key', type_='unique')
        batch.drop_constraint('fk_sweeps_token_id', type_='foreignkey')
        batch.drop_column('request_fingerprint')
        batch.drop_column('idempotency_key')
        batch.drop_column('token_id')
