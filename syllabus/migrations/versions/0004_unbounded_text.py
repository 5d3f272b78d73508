"""jobs.task_name and samples.label are TEXT

A label holds a numeric or open-ended task's answer and a task's name is the user's: neither has a
length a VARCHAR(256) can promise, and PostgreSQL refuses a longer value (the step then fails for good
on retry). SQLite ignores the length either way; the batch mode rewrites its tables.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.alter_column('task_name', type_=sa.Text(), existing_type=sa.String(256), existing_nullable=False)
    with op.batch_alter_table('samples') as batch:
        batch.alter_column('label', type_=sa.Text(), existing_type=sa.String(256), existing_nullable=False)


def downgrade() -> None:
    # Values longer than 256 characters are cut to fit the old column.
    op.execute(sa.text("UPDATE samples SET label = substr(label, 1, 256) WHERE length(label) > 256"))
    op.execute(sa.text("UPDATE jobs SET task_name = substr(task_name, 1, 256) WHERE length(task_name) > 256"))
    with op.batch_alter_table('samples') as batch:
        batch.alter_column('label', type_=sa.String(256), existing_type=sa.Text(), existing_nullable=False)
    with op.batch_alter_table('jobs') as batch:
        batch.alter_column('task_name', type_=sa.String(256), existing_type=sa.Text(), existing_nullable=False)
