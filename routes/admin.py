"""Admin pages for users (issue 2 item 12): list, deactivate, activate. /admin/audit lives in routes/audit.py."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm

from models import User
from utils import accounts
from utils.database import ID_RULE
from utils.errors import NotFound
from utils.extensions import db
from utils.sessions import admin_required

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _user_or_404(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


@bp.get("/users")
@admin_required
def list_users():
    page = accounts.users_page(request.args.get("page", 1, type=int))
    return render_template("admin/users.html", users=page.items, page=page, form=FlaskForm())


@bp.post(f"/users/<{ID_RULE}:user_id>/deactivate")
@admin_required
def deactivate_user(user_id: int):
    user = _user_or_404(user_id)
    accounts.set_active(user, False, actor=current_user._get_current_object())
    db.session.commit()
    flash(f"{user.email} is deactivated and signed out everywhere.", "success")
    return redirect(url_for("admin.list_users"))


@bp.post(f"/users/<{ID_RULE}:user_id>/activate")
@admin_required
def activate_user(user_id: int):
    user = _user_or_404(user_id)
    accounts.set_active(user, True, actor=current_user._get_current_object())
    db.session.commit()
    flash(f"{user.email} is active again.", "success")
    return redirect(url_for("admin.list_users"))
