"""drift: a trained version's reference output distribution, and each finished score job's output distribution
and drift against a reference

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'drift_references',
        sa.Column('model_version_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('item_count', sa.Integer(), nullable=False),
        sa.Column('distribution', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('model_version_id'),
    )
    op.create_table(
        'score_drift',
        sa.Column('job_id', sa.String(length=36), nullable=False),
        sa.Column('model_version_id', sa.Integer(), nullable=False),
        sa.Column('reference_kind', sa.String(length=20), nullable=True),
        sa.Column('reference_job_id', sa.String(length=36), nullable=True),
        sa.Column('statistic', sa.String(length=10), nullable=False),
        sa.Column('value', sa.Float(), nullable=True),
        sa.Column('threshold', sa.Float(), nullable=False),
        sa.Column('exceeded', sa.Boolean(), nullable=False),
        sa.Column('item_count', sa.Integer(), nullable=False),
        sa.Column('distribution', sa.JSON(), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=False),
        sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('job_id'),
    )
    op.create_index('ix_score_drift_version_computed', 'score_drift', ['model_version_id', 'computed_at'])


def downgrade() -> None:
    op.drop_index('ix_score_drift_version_computed', table_name='score_drift')
    op.drop_table('score_drift')
    op.drop_table('drift_references')
