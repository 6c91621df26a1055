"""/settings: the notification bot token (write-only, encrypted at rest) and links to other settings."""
from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import PasswordField
from wtforms.validators import DataRequired, Length

from utils import user_settings
from utils.errors import ValidationFailed
from utils.extensions import db

bp = Blueprint("settings", __name__, url_prefix="/settings")


class NotificationTokenForm(FlaskForm):
    token = PasswordField("New bot token", validators=[DataRequired(), Length(max=user_settings.MAX_TOKEN_LENGTH)])


class RemoveTokenForm(FlaskForm):
    """Only the CSRF token."""


@bp.get("")
@login_required
def index():
    return _render(NotificationTokenForm())


@bp.post("/notification-token")
@login_required
def save_notification_token():
    form = NotificationTokenForm()
    if not form.validate_on_submit():
        return _render(form), 422
    try:
        user_settings.set_notification_token(current_user.id, form.token.data)
    except ValidationFailed as error:
        form.token.errors = [error.message]
        return _render(form), 422
    db.session.commit()
    flash("Notification bot token saved.", "success")
    return redirect(url_for("settings.index"))


@bp.post("/notification-token/remove")
@login_required
def remove_notification_token():
    RemoveTokenForm().validate_on_submit()  # CSRF is already enforced globally; nothing else to check
    user_settings.remove_notification_token(current_user.id)
    db.session.commit()
    flash("Notification bot token removed.", "success")
    return redirect(url_for("settings.index"))


def _render(form: NotificationTokenForm):
    status = user_settings.notification_token_status(current_user.id)
    db.session.commit()  # the settings row may just have been created
    return render_template("settings/index.html", form=form, remove_form=RemoveTokenForm(), status=status)
