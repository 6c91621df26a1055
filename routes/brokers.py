"""/brokers: link broker accounts (OAuth 2.0 with PKCE, E*TRADE OAuth 1.0a), see their status, disconnect."""
from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length, Regexp

from utils import broker_links
from utils.brokers import oauth
from utils.database import ID_RULE
from utils.extensions import db

bp = Blueprint("brokers_page", __name__, url_prefix="/brokers")


class ButtonForm(FlaskForm):
    """Only the CSRF token (Connect / Disconnect buttons)."""


class VerifierForm(FlaskForm):
    verifier = StringField("Verification code from E*TRADE",
                           validators=[DataRequired(), Length(max=32), Regexp(r"^[A-Za-z0-9]+$")])


@bp.get("")
@login_required
def index():
    return render_template("brokers/index.html", connections=broker_links.list_connections(current_user),
                           available=oauth.configured_brokers(), names=oauth.DISPLAY_NAMES,
                           button=ButtonForm(), masked=broker_links.masked)


@bp.post("/<broker>/connect")
@login_required
def connect(broker):
    return broker_links.start_link(broker)


@bp.get("/<broker>/callback")
@login_required
def callback(broker):
    try:
        connection = broker_links.complete_link_from_callback(current_user, broker)
    except broker_links.LinkFailed as error:
        flash(error.message, "error")
        return redirect(url_for("brokers_page.index"))
    db.session.commit()
    flash(f"{oauth.DISPLAY_NAMES[broker]} linked with {len(connection.accounts)} account(s).", "success")
    return redirect(url_for("brokers_page.index"))


@bp.route("/etrade/verify", methods=["GET", "POST"])
@login_required
def etrade_verify():
    from utils.brokers import etrade
    form = VerifierForm()
    if not form.validate_on_submit():
        return render_template("brokers/etrade_verify.html", form=form,
                               authorize_url=etrade.pending_authorize_url()), (422 if form.is_submitted() else 200)
    try:
        etrade.complete_link(current_user, form.verifier.data)
    except broker_links.LinkFailed as error:
        flash(error.message, "error")
        return redirect(url_for("brokers_page.index"))
    db.session.commit()
    flash("E*TRADE linked.", "success")
    return redirect(url_for("brokers_page.index"))


@bp.post(f"/<{ID_RULE}:connection_id>/disconnect")
@login_required
def disconnect(connection_id):
    connection = broker_links.disconnect(current_user, connection_id)
    db.session.commit()
    flash(f"{oauth.DISPLAY_NAMES[connection.broker.value]} disconnected; its tokens are deleted.", "success")
    return redirect(url_for("brokers_page.index"))
