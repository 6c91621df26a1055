"""The dashboard (/): account balances, open positions with unrealized P&L, and recent orders."""
from __future__ import annotations

import logging

from flask import Blueprint, render_template
from flask_login import current_user, login_required

from routes.orders import OPEN_STATUSES
from utils import orders, position_check, stoploss, trades
from utils.errors import DomainError

bp = Blueprint("dashboard", __name__)
log = logging.getLogger("tradewarden.dashboard")

RECENT_ORDERS = 10


@bp.get("/")
@login_required
def index():
    recent, _ = orders.list_orders(current_user, status=None, cursor=None, limit=RECENT_ORDERS)
    account, positions, broker_problem = None, [], None
    try:
        account, positions = trades.account_summary(current_user), trades.positions(current_user)
    except DomainError as error:  # a broker that is down must not take the whole page with it
        log.warning("dashboard: account unavailable for user %s: %s", current_user.id, error.code)
        broker_problem = error.message
    return render_template("dashboard.html", account=account, positions=positions, recent_orders=recent,
                           broker_problem=broker_problem, open_statuses=OPEN_STATUSES,
                           stoploss_guard=stoploss.guard_status(current_user),  # stop-loss guard card (issue 5)
                           position_shortfalls=position_check.warnings_for(current_user))
