"""Trades pages: open trades with unrealized P&L, closed ones with realized P&L, and closing a trade."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from utils import trades
from utils.database import ID_RULE
from utils.errors import DomainError
from utils.extensions import db

bp = Blueprint("trades", __name__, url_prefix="/trades")

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
    return _run_and_return(lambda: trades.close_trade(current_user, trade_id),
                           "Closing trade #{trade.id} ({trade.symbol}): a market exit order is on its way.")


@bp.post(f"/<{ID_RULE}:trade_id>/closed-at-broker")
@login_required
def closed_at_broker(trade_id: int):
    return _run_and_return(lambda: trades.record_closed_at_broker(current_user, trade_id,
                                                                  {"exit_price": request.form.get("exit_price")}),
                           "Trade #{trade.id} ({trade.symbol}) is recorded as closed at the broker.")


def _run_and_return(action, success: str):
    """Run a trade action and commit, flashing `success` (formatted with the trade); a refusal is rolled back
    and flashed instead (an unknown trade stays a 404). Back to the trades list either way."""
    try:
        trade = action()
    except DomainError as error:
        if error.status == 404:
            raise
        db.session.rollback()
        flash(error.message, "error")
        return redirect(url_for("trades.index"))
    db.session.commit()
    flash(success.format(trade=trade), "success")
    return redirect(url_for("trades.index"))


# --- stop-loss guard (issue 5, stop-loss engineer): the protection form of one open trade --------------

from flask_wtf import FlaskForm  # noqa: E402
from wtforms import StringField, SubmitField  # noqa: E402
from wtforms.validators import Length  # noqa: E402


class ProtectionForm(FlaskForm):
    """Stop-loss, trailing percent and take-profit of an open trade; a blank field clears it."""

    stop_loss_price = StringField("Stop-loss price", validators=[Length(max=32)])
    trailing_stop_percent = StringField("Trailing stop (%)", validators=[Length(max=8)])
    take_profit_price = StringField("Take-profit price", validators=[Length(max=32)])
    submit = SubmitField("Save")


@bp.route(f"/<{ID_RULE}:trade_id>/stop-loss", methods=["GET", "POST"])
@login_required
def protection(trade_id: int):
    from utils import stoploss
    trade = trades.get_trade(current_user, trade_id)
    form = ProtectionForm(data=stoploss.protection_form_data(trade))
    if form.validate_on_submit():
        try:
            stoploss.update_protection(current_user, trade_id, {name: form[name].data.strip() or None
                                                                for name in stoploss.PROTECTION_FIELDS})
            db.session.commit()
            flash(f"Trade #{trade_id}: protection saved.", "success")
            return redirect(url_for("trades.protection", trade_id=trade_id))
        except DomainError as error:
            if error.status == 404:
                raise
            db.session.rollback()
            flash(error.message, "error")
    return render_template("stoploss/protection.html", trade=trades.trade_to_dict(trade), form=form)
