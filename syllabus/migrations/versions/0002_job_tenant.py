"""jobs: tenant and task_sha256

Every job belongs to the tenant that submitted it (rows from before tenants get "default"), and
records the sha256 of its canonical task so a resubmitted job id is checked against it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('tenant', sa.String(length=64), server_default='default', nullable=False))
        batch.add_column(sa.Column('task_sha256', sa.String(length=64), server_default='', nullable=False))
        batch.create_index('ix_jobs_tenant', ['tenant'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index('ix_jobs_tenant')
        batch.drop_column('task_sha256')
        batch.drop_column('tenant')
