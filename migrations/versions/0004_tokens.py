"""access: API tokens (hashes only) with scopes; the token that created each job

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 22:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash', name='uq_api_tokens_hash')
    )
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('token_id', sa.Integer(), nullable=True))
        batch.create_foreign_key('fk_jobs_token_id', 'api_tokens', ['token_id'], ['id'])
    op.create_index('ix_jobs_token_status', 'jobs', ['token_id', 'status'])


def downgrade() -> None:
    op.drop_index('ix_jobs_token_status', table_name='jobs')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_constraint('fk_jobs_token_id', type_='foreignkey')
        batch.drop_column('token_id')
    op.drop_table('api_tokens')
