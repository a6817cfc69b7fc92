"""similar-image search: embed jobs' item categories and specs, catalog embeddings, vector index versions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 05:15:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('spec', sa.JSON(), nullable=True))
    with op.batch_alter_table('job_items') as batch:
        batch.add_column(sa.Column('category', sa.String(length=200), nullable=True))
    op.create_table('embeddings',
    sa.Column('catalog', sa.String(length=100), nullable=False),
    sa.Column('space', sa.String(length=300), nullable=False),
    sa.Column('item_id', sa.String(length=500), nullable=False),
    sa.Column('category', sa.String(length=200), nullable=True),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('catalog', 'space', 'item_id')
    )
    op.create_index('ix_embeddings_space_hash', 'embeddings', ['space', 'content_hash'])
    op.create_index('ix_embeddings_catalog_space_created', 'embeddings', ['catalog', 'space', 'created_at'])
    op.create_table('vector_indexes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('catalog', sa.String(length=100), nullable=False),
    sa.Column('space', sa.String(length=300), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('mode', sa.String(length=10), nullable=False),
    sa.Column('base_version', sa.Integer(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('item_count', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('watermark', sa.DateTime(timezone=True), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id']),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('catalog', 'space', 'version', name='uq_vector_indexes_version')
    )


def downgrade() -> None:
    op.drop_table('vector_indexes')
    op.drop_index('ix_embeddings_catalog_space_created', table_name='embeddings')
    op.drop_index('ix_embeddings_space_hash', table_name='embeddings')
    op.drop_table('embeddings')
    with op.batch_alter_table('job_items') as batch:
        batch.drop_column('category')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('spec')
