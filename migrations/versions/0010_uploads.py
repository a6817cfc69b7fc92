"""uploads: a folder of files sent in parts, each file once by name, that a score or embed job takes as its items

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 03:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'uploads',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('token_id', sa.Integer(), nullable=True),
        sa.Column('job_id', sa.String(length=36), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['token_id'], ['api_tokens.id'], name='fk_uploads_token_id'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'upload_files',
        sa.Column('upload_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=500), nullable=False),
        sa.Column('stored', sa.String(length=200), nullable=False),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['upload_id'], ['uploads.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('upload_id', 'name'),
    )


def downgrade() -> None:
    op.drop_table('upload_files')
    op.drop_table('uploads')
