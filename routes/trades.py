"""Trades pages: open trades with unrealized P&L, closed ones with realized P&L, and closing a trade."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from utils import trades
from utils.errors import DomainError
from utils.extensions import db

bp = Blueprint("trades", __name__, url_prefix="/trades")

ID_RULE = "int(min=1, max=9223372036854775807)"
TABS = {"open": "Open", "closed": "Closed", "cancelled": "Cancelled"}


@bp.get("")
@login_required
def index():
    tab = request.args.get("status") if request.args.get("status") in TABS else "open"
    if tab == "open":
        rows, next_cursor = trades.positions(current_user), None
    else:
        cursor = request.args.get("cursor", "")
        items, next_cursor = trades.list_trades(current_user, status=tab, limit=50,
                                                cursor=cursor if cursor.isascii() and cursor.isdigit() else None)
        rows = [trades.trade_to_dict(trade) for trade in items]
    return render_template("trades/index.html", rows=rows, next_cursor=next_cursor, tab=tab, tabs=TABS)


@bp.post(f"/<{ID_RULE}:trade_id>/close")
@login_required
def close(trade_id: int):
    try:
        trade = trades.close_trade(current_user, trade_id)
    except DomainError as error:
        if error.status == 404:
            raise
        db.session.rollback()
        flash(error.message, "error")
        return redirect(url_for("trades.index"))
    db.session.commit()
    flash(f"Closing trade #{trade.id} ({trade.symbol}): a market exit order is on its way.", "success")
    return redirect(url_for("trades.index"))
