"""Risk settings page (/settings/risk): the six per-user limits that every new entry order must pass."""
from __future__ import annotations

from decimal import Decimal

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import DecimalField, IntegerField, SubmitField
from wtforms.validators import InputRequired, NumberRange

from utils import risk
from utils.errors import ValidationFailed
from utils.extensions import db

bp = Blueprint("risk_page", __name__, url_prefix="/settings/risk")


def percent(maximum: int = 100) -> list:
    return [InputRequired(), NumberRange(min=Decimal("0.01"), max=maximum,
                                         message=f"Enter a percentage from 0.01 to {maximum}.")]


class RiskLimitsForm(FlaskForm):
    max_risk_per_trade_pct = DecimalField("Max risk per trade (%)", places=None, validators=percent())
    default_stop_pct = DecimalField("Default stop distance (%)", places=None,
                                    validators=percent(99))
    daily_trade_limit = IntegerField("Orders per day", validators=[
        InputRequired(), NumberRange(min=1, max=100_000, message="Enter a whole number from 1 to 100000.")])
    daily_notional_limit = DecimalField("Order value per day (USD)", places=None, validators=[
        InputRequired(), NumberRange(min=1, max=10**12, message="Enter an amount from 1 to 1000000000000.")])
    max_concentration_pct = DecimalField("Max exposure to one symbol (%)", places=None, validators=percent())
    daily_loss_limit_pct = DecimalField("Daily loss limit (%)", places=None,
                                        validators=percent())
    submit = SubmitField("Save limits")

    def to_request(self) -> dict:
        return {name: str(field.data) for name, field in self._fields.items()
                if name not in ("submit", "csrf_token")}


HINTS = {
    "max_risk_per_trade_pct": "Loss from entry to stop-loss, as a share of equity.",
    "default_stop_pct": "Assumed stop below entry for orders sent without a stop-loss.",
    "daily_trade_limit": "Orders you may place per UTC day.",
    "daily_notional_limit": "Total value of orders per UTC day.",
    "max_concentration_pct": "Your position in one symbol after the order, as a share of equity.",
    "daily_loss_limit_pct": "Realized loss today (share of equity) beyond this blocks new entries.",
}


@bp.route("", methods=["GET", "POST"])
@login_required
def edit():
    current = None if request.method == "POST" else limits_as_form_data(risk.get_limits(current_user))
    form = RiskLimitsForm(data=current)
    if form.validate_on_submit():
        try:
            risk.update_limits(current_user, form.to_request())
        except ValidationFailed as error:
            db.session.rollback()
            show_field_error(form, error)
        else:
            db.session.commit()
            flash("Risk limits saved.", "success")
            return redirect(url_for("risk_page.edit"))
    return render_template("risk/edit.html", form=form, hints=HINTS), 422 if form.is_submitted() else 200


def show_field_error(form: FlaskForm, error: ValidationFailed) -> None:
    """Show a service's validation error on the field it names, else above the form."""
    field = form._fields.get(str((error.details or {}).get("field")))
    if field is not None:
        field.errors = [*field.errors, error.message]
    else:
        form.form_errors.append(error.message)


def limits_as_form_data(limits) -> dict:
    """The current limits, from the service's object or dict, keyed by form field."""
    values = risk.limits_to_dict(limits)
    return {name: values.get(name) for name in HINTS}
