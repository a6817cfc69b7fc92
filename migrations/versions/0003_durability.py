"""durability: poison-item isolation on chunks, upload folders of jobs, liveness of maintenance loops

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 22:10:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.add_column(sa.Column('suspect_item', sa.String(length=500), nullable=True))
        batch.add_column(sa.Column('suspect_deaths', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('upload_folder', sa.String(length=64), nullable=True))
    op.create_index('ix_jobs_upload_folder', 'jobs', ['upload_folder'])
    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('source', sa.JSON),
                    sa.column('upload_folder', sa.String))
    conn = op.get_bind()
    for job_id, source in conn.execute(sa.select(jobs.c.id, jobs.c.source)).all():
        if isinstance(source, dict) and source.get('type') == 'upload' and source.get('folder'):
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(upload_folder=source['folder']))
    op.create_table('maintenance_beats',
    sa.Column('name', sa.String(length=50), nullable=False),
    sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('maintenance_beats')
    op.drop_index('ix_jobs_upload_folder', table_name='jobs')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('upload_folder')
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('suspect_deaths')
        batch.drop_column('suspect_item')
