"""training_runs.tokens and training_runs.created_at: the tenant's training-token quota

`tenant_training_tokens_per_day` sums the tokens of a tenant's training runs recorded in the last
24 hours. Runs recorded before this revision count 0 tokens at the time of the upgrade.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('training_runs') as batch:
        batch.add_column(sa.Column('tokens', sa.BigInteger(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('created_at', sa.DateTime(timezone=True), nullable=False,
                                   server_default=sa.func.current_timestamp()))
    op.create_index('ix_training_runs_created_at', 'training_runs', ['created_at'])


def downgrade() -> None:
    op.drop_index('ix_training_runs_created_at', table_name='training_runs')
    with op.batch_alter_table('training_runs') as batch:
        batch.drop_column('created_at')
        batch.drop_column('tokens')
