"""result_exports: where a job's results are exported when it succeeds, and how that went

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 03:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'result_exports',
        sa.Column('job_id', sa.String(length=36), nullable=False),
        sa.Column('uri', sa.String(length=1100), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('rows', sa.BigInteger(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('tries', sa.Integer(), server_default='0', nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('job_id'),
    )
    op.create_index('ix_result_exports_status', 'result_exports', ['status'])


def downgrade() -> None:
    op.drop_index('ix_result_exports_status', table_name='result_exports')
    op.drop_table('result_exports')
