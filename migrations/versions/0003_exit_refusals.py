"""automated exits the broker refused

When the broker refuses a stop-loss, take-profit or expiry exit (the position is no longer there, the
symbol is halted), the trade is handed back to `open`. Without a record of it the next sweep sent the same
exit again, every minute, for as long as the price stayed through the stop. `exit_refusals` counts the
refusals in a row and `exit_retry_at` says when the next automated exit may go.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 08:40:00

"""
import sqlalchemy as sa
from alembic import op

import utils.dbtypes

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.add_column(sa.Column('exit_refusals', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('exit_retry_at', utils.dbtypes.UTCDateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.drop_column('exit_retry_at')
        batch_op.drop_column('exit_refusals')
