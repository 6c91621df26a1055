"""indexes for the reads of every order placement

The risk checks and the paper account read a user's working orders, their trades closed today and an
account's open paper orders. Without these indexes each of those reads scanned every order or trade the
user (or account) ever had, so placing an order grew slower with the account's history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 19:00:00

"""
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_user_status', ['user_id', 'status'], unique=False)
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.create_index('ix_trades_user_closed', ['user_id', 'closed_at'], unique=False)
    with op.batch_alter_table('paper_orders', schema=None) as batch_op:
        batch_op.create_index('ix_paper_orders_account_status', ['account_id', 'status'], unique=False)


def downgrade():
    with op.batch_alter_table('paper_orders', schema=None) as batch_op:
        batch_op.drop_index('ix_paper_orders_account_status')
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.drop_index('ix_trades_user_closed')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_user_status')
