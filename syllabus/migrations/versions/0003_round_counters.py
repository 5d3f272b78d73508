"""rounds: every counter of a round is a column

`leaked` (generated examples dropped by the leakage guard), `targeted` (of `generated`, made by
targeted generation), `train_loss` and `adapter_uri` join generated/kept/selected/trained/accuracy,
so a round's SQL row says what `RoundResult` says. Rows from before get 0 / NULL / "".

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rounds') as batch:
        batch.add_column(sa.Column('leaked', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('targeted', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('train_loss', sa.Float(), nullable=True))
        batch.add_column(sa.Column('adapter_uri', sa.Text(), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('rounds') as batch:
        batch.drop_column('adapter_uri')
        batch.drop_column('train_loss')
        batch.drop_column('targeted')
        batch.drop_column('leaked')
