"""Settings → API keys: create (the secret is shown once), list, rotate, revoke, revoke all."""
from __future__ import annotations

from flask import Blueprint, flash, make_response, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import IntegerField, StringField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from utils import api_auth
from utils.database import ID_RULE
from utils.extensions import db

bp = Blueprint("api_keys_page", __name__, url_prefix="/settings/api-keys")


class CreateKeyForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=api_auth.KEY_NAME_MAX)])
    expires_in_days = IntegerField("Expires in (days)", default=api_auth.KEY_DEFAULT_DAYS,
                                   validators=[Optional(), NumberRange(min=1, max=api_auth.KEY_MAX_DAYS)])


class ActionForm(FlaskForm):
    """Rotate / revoke / revoke all: only the CSRF token."""


def _page(form: CreateKeyForm | None = None, new_secret: str | None = None, new_key=None, status: int = 200):
    keys = api_auth.list_api_keys(current_user)
    html = render_template("api_keys/index.html", form=form or CreateKeyForm(), action_form=ActionForm(),
                           keys=[api_auth.serialize_api_key(key) for key in keys], new_secret=new_secret,
                           new_key=new_key, grace_hours=api_auth.rotation_grace_hours())
    response = make_response(html, status)
    response.headers["Cache-Control"] = "no-store"  # the one-time secret must not be cached
    return response


@bp.get("")
@login_required
def index():
    api_auth.limit_endpoint("keys.list", current_user.id)
    return _page()


@bp.post("")
@login_required
def create():
    form = CreateKeyForm()
    if not form.validate_on_submit():
        return _page(form, status=422)
    api_auth.limit_endpoint("keys.create", current_user.id)
    key, secret = api_auth.create_api_key(current_user, form.name.data, form.expires_in_days.data)
    db.session.commit()
    return _page(new_secret=secret, new_key=api_auth.serialize_api_key(key), status=201)


@bp.post(f"/<{ID_RULE}:key_id>/rotate")
@login_required
def rotate(key_id: int):
    if not ActionForm().validate_on_submit():
        return redirect(url_for(".index"))
    api_auth.limit_endpoint("keys.rotate", current_user.id)
    new, secret, _old = api_auth.rotate_api_key(current_user, key_id)
    db.session.commit()
    return _page(new_secret=secret, new_key=api_auth.serialize_api_key(new), status=201)


@bp.post(f"/<{ID_RULE}:key_id>/revoke")
@login_required
def revoke(key_id: int):
    if ActionForm().validate_on_submit():
        api_auth.limit_endpoint("keys.revoke", current_user.id)
        key = api_auth.revoke_api_key(current_user, key_id)
        db.session.commit()
        flash(f"Key {key.prefix}… revoked.", "success")
    return redirect(url_for(".index"))


@bp.post("/revoke-all")
@login_required
def revoke_all():
    if ActionForm().validate_on_submit():
        api_auth.limit_endpoint("keys.revoke_all", current_user.id)
        count = api_auth.revoke_all_api_keys(current_user.id, actor=current_user)
        db.session.commit()
        flash(f"{count} key(s) revoked.", "success")
    return redirect(url_for(".index"))
