"""training: train runs, epoch metrics, sweeps, schedules

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 10:04:00.918727
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('schedules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('cron', sa.String(length=100), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=100), nullable=False),
    sa.Column('train', sa.JSON(), nullable=False),
    sa.Column('gate', sa.JSON(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('sweeps',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('base', sa.JSON(), nullable=False),
    sa.Column('grid', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('schedule_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('schedule_id', sa.Integer(), nullable=False),
    sa.Column('slot_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.Column('decision', sa.String(length=20), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('schedule_id', 'slot_at', name='uq_schedule_runs_slot')
    )
    op.create_table('train_metrics',
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'epoch')
    )
    op.create_table('train_runs',
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('model_name', sa.String(length=100), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('epochs_total', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('steps_per_epoch', sa.Integer(), nullable=False),
    sa.Column('phase', sa.String(length=40), nullable=True),
    sa.Column('eta_seconds', sa.Float(), nullable=True),
    sa.Column('checkpoint_epoch', sa.Integer(), nullable=False),
    sa.Column('checkpoint_path', sa.Text(), nullable=True),
    sa.Column('resumed_from_epoch', sa.Integer(), nullable=True),
    sa.Column('data_stats', sa.JSON(), nullable=True),
    sa.Column('result_version_id', sa.Integer(), nullable=True),
    sa.Column('holdout_metrics', sa.JSON(), nullable=True),
    sa.Column('comparison', sa.JSON(), nullable=True),
    sa.Column('sweep_id', sa.String(length=36), nullable=True),
    sa.Column('schedule_run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['result_version_id'], ['model_versions.id'], ),
    sa.ForeignKeyConstraint(['schedule_run_id'], ['schedule_runs.id'], ),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweeps.id'], ),
    sa.PrimaryKeyConstraint('job_id')
    )
    with op.batch_alter_table('train_runs', schema=None) as batch_op:
        batch_op.create_index('ix_train_runs_state', ['state'], unique=False)

    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_version_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_model_aliases_previous_version', 'model_versions',
                                    ['previous_version_id'], ['id'])

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.alter_column('model_version_id',
               existing_type=sa.INTEGER(),
               nullable=True)



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.alter_column('model_version_id',
               existing_type=sa.INTEGER(),
               nullable=False)

    with op.batch_alter_table('model_aliases', schema=None) as batch_op:
        batch_op.drop_constraint('fk_model_aliases_previous_version', type_='foreignkey')
        batch_op.drop_column('previous_version_id')

    with op.batch_alter_table('train_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_train_runs_state')

    op.drop_table('train_runs')
    op.drop_table('train_metrics')
    op.drop_table('schedule_runs')
    op.drop_table('sweeps')
    op.drop_table('schedules')
