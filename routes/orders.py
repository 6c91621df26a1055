"""Orders pages: the order ticket, the list, one order with its events and fills, cancel, and a status poll.

Works without JavaScript; static/orders.js only refreshes status cells through `status.json`.
"""
from __future__ import annotations

import uuid
from decimal import ROUND_HALF_EVEN, Decimal

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import DecimalField, HiddenField, SelectField, StringField, SubmitField
from wtforms.fields import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional, Regexp

from models import OrderStatus
from utils import orders
from utils.database import ID_RULE
from utils.errors import DomainError, RiskLimitExceeded
from utils.extensions import db

bp = Blueprint("orders", __name__, url_prefix="/orders")

OPEN_STATUSES = {OrderStatus.PENDING, OrderStatus.SUBMITTING, OrderStatus.SUBMITTED,
                 OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_CANCEL}
POSITIVE = NumberRange(min=Decimal("0.0000000001"), message="Must be greater than zero.")
CENT = Decimal("0.01")


@bp.app_template_filter("money")
def money(value, places: str | None = None) -> str:
    """A price or amount for display: 1,234.50; sub-dollar prices keep 4 places ('—' when unknown)."""
    if value in (None, ""):
        return "—"
    amount = Decimal(str(value))
    if places is None:
        sub_cent = amount != amount.quantize(CENT)
        places = "0.0001" if 0 < abs(amount) < 1 and sub_cent else "0.01"
    return f"{amount.quantize(Decimal(places), rounding=ROUND_HALF_EVEN):,}"


@bp.app_template_filter("signed_money")
def signed_money(value) -> str:
    """An amount of P&L to the cent, with a leading + for gains."""
    if value in (None, ""):
        return "—"
    text = money(value, places="0.01")
    return f"+{text}" if Decimal(str(value)) > 0 else text


@bp.app_template_filter("risk_number")
def risk_number(value, name: str) -> str:
    """One number of a risk denial: percentages with %, counts as whole numbers, amounts to the cent."""
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    if name.endswith("pct"):
        return f"{quantity_text(amount)} %"
    return f"{int(amount):,}" if amount == amount.to_integral_value() else money(amount)


@bp.app_template_filter("pnl_class")
def pnl_class(value) -> str:
    """CSS class for a gain (pos) or a loss (neg)."""
    if value in (None, ""):
        return ""
    amount = Decimal(str(value))
    return "pos" if amount > 0 else "neg" if amount < 0 else ""


bp.add_app_template_filter(orders.waiting_notice, "waiting_notice")  # why an order is delayed, or None


@bp.app_template_filter("quantity")
def quantity_text(value) -> str:
    """A quantity without trailing zeros: 10, 0.25."""
    if value in (None, ""):
        return "—"
    text = format(Decimal(str(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def choices(*pairs: tuple[str, str]) -> list[SelectChoice]:
    return [SelectChoice(value, label) for value, label in pairs]


class OrderTicketForm(FlaskForm):
    """The order ticket. Field names match the JSON order request (except `order_type` → `type`)."""

    symbol = StringField("Symbol", validators=[DataRequired(), Length(max=32),
                                               Regexp(r"^[A-Za-z0-9][A-Za-z0-9./ -]*$", message="Not a symbol.")])
    side = SelectField("Side", choices=choices(("buy", "Buy"), ("sell", "Sell")))
    quantity = DecimalField("Quantity", places=None, validators=[DataRequired(), POSITIVE])
    order_type = SelectField("Order type", choices=choices(("market", "Market"), ("limit", "Limit"), ("stop", "Stop"),
                                                           ("stop_limit", "Stop limit")))
    limit_price = DecimalField("Limit price", places=None, validators=[Optional(), POSITIVE])
    stop_price = DecimalField("Stop price", places=None, validators=[Optional(), POSITIVE])
    time_in_force = SelectField("Time in force", choices=choices(("day", "Day"), ("gtc", "Good till cancelled")))
    stop_loss_price = DecimalField("Stop-loss price", places=None, validators=[Optional(), POSITIVE])
    take_profit_price = DecimalField("Take-profit price", places=None, validators=[Optional(), POSITIVE])
    # Stop-loss guard (issue 5, stop-loss engineer): a trailing stop set at entry.
    trailing_stop_percent = DecimalField("Trailing stop (%)", places=None, validators=[Optional(), POSITIVE])
    client_order_id = HiddenField(validators=[Length(max=64)])
    submit = SubmitField("Place order")

    def validate(self, extra_validators=None) -> bool:
        """Field checks, then the prices each order type needs (Optional() ends a field's own chain early)."""
        valid = super().validate(extra_validators)
        needs = {"limit_price": ("limit", "stop_limit"), "stop_price": ("stop", "stop_limit")}
        for name, order_types in needs.items():
            field = self[name]
            if self.order_type.data in order_types and field.data is None and not field.errors:
                field.errors = [*field.errors, f"A {field.label.text.lower()} is required for this order type."]
                valid = False
        return valid

    def to_request(self) -> dict:
        """The validated ticket as an order request for utils.orders.place_order (decimals as strings)."""
        names = ("symbol", "side", "quantity", "limit_price", "stop_price", "time_in_force", "stop_loss_price",
                 "take_profit_price", "client_order_id", "trailing_stop_percent")
        values = {name: getattr(self, name).data for name in names}
        values["symbol"] = values["symbol"].strip().upper()
        values["type"] = self.order_type.data
        return {name: format(value, "f") if hasattr(value, "as_tuple") else value
                for name, value in values.items() if value not in (None, "")}


def show_service_error(form: FlaskForm, error: DomainError) -> None:
    """Put a service error on the field it names, or above the form when it names none."""
    details = error.details or {}
    name = "order_type" if details.get("field") == "type" else str(details.get("field"))
    field = form._fields.get(name)
    if field is not None and name not in ("submit", "csrf_token", "client_order_id"):
        field.errors = [*field.errors, error.message]
    else:
        form.form_errors.append(error.message)
    if error.code == "order.client_order_id_reused":  # the ticket was edited after it was placed: a new ticket
        form.client_order_id.data = uuid.uuid4().hex


def submit_ticket(form: OrderTicketForm):
    """Place the ticket's order: ((order, created), None), or (None, risk error) / (None, None) with the form
    carrying the error."""
    try:
        return orders.place_order(current_user, form.to_request()), None
    except RiskLimitExceeded as error:
        db.session.rollback()
        return None, error
    except DomainError as error:
        if error.status == 500:
            raise
        db.session.rollback()
        show_service_error(form, error)
        return None, None


@bp.route("/new", methods=["GET", "POST"])
@login_required
def new():
    form = OrderTicketForm(symbol=request.args.get("symbol", ""))
    if not form.client_order_id.data:
        form.client_order_id.data = uuid.uuid4().hex
    placed, risk_error = submit_ticket(form) if form.validate_on_submit() else (None, None)
    if placed:
        order, created = placed
        db.session.commit()
        flash(f"Order #{order.id} placed." if created else f"Order #{order.id} was already placed.", "success")
        return redirect(url_for("orders.show", order_id=order.id))
    http_status = 422 if form.is_submitted() else 200
    return render_template("orders/new.html", form=form, risk_error=risk_error), http_status


@bp.get("")
@login_required
def index():
    status = request.args.get("status") if request.args.get("status") in set(OrderStatus) else None
    cursor = request.args.get("cursor", "")
    items, next_cursor = orders.list_orders(current_user, status=status, limit=50,
                                            cursor=cursor if cursor.isascii() and cursor.isdigit() else None)
    return render_template("orders/index.html", orders=items, next_cursor=next_cursor, status=status,
                           statuses=list(OrderStatus), open_statuses=OPEN_STATUSES)


@bp.get(f"/<{ID_RULE}:order_id>")
@login_required
def show(order_id: int):
    order = orders.get_order(current_user, order_id)
    return render_template("orders/show.html", order=order, open_statuses=OPEN_STATUSES)


@bp.get(f"/<{ID_RULE}:order_id>/status.json")
@login_required
def status(order_id: int):
    order = orders.get_order(current_user, order_id)
    return jsonify(status_to_dict(order))


def status_to_dict(order) -> dict:
    """The few fields the status poll refreshes in the page."""
    average = order.average_fill_price
    return {"id": order.id, "status": order.status.value, "filled_quantity": format(order.filled_quantity, "f"),
            "average_fill_price": None if average is None else format(average, "f"),
            "open": order.status in OPEN_STATUSES, "notice": orders.waiting_notice(order)}


@bp.post(f"/<{ID_RULE}:order_id>/cancel")
@login_required
def cancel(order_id: int):
    try:
        order = orders.cancel_order(current_user, order_id)
    except DomainError as error:
        if error.status == 404:
            raise
        db.session.rollback()
        flash(error.message, "error")
        return redirect(url_for("orders.show", order_id=order_id))
    db.session.commit()
    flash(f"Order #{order.id}: cancel requested." if order.status != OrderStatus.CANCELLED
          else f"Order #{order.id} cancelled.", "success")
    return redirect(url_for("orders.show", order_id=order.id))
