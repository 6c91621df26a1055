"""Audit log pages: /audit (the signed-in user's own events) and /admin/audit (all events, admins)."""
from flask import Blueprint, render_template, request
from flask_login import current_user, login_required

from utils import audit
from utils.sessions import admin_required

bp = Blueprint("audit", __name__)


@bp.get("/audit")
@login_required
def own_events():
    page = audit.events_for_user(current_user.id, audit.page_number(request.args.get("page")))
    return render_template("audit/list.html", page=page, emails=audit.emails_by_user_id(page.items))


@bp.get("/admin/audit")
@admin_required
def all_events():
    event_type, email = request.args.get("event_type", ""), request.args.get("email", "")
    page = audit.search_events(event_type, email, audit.page_number(request.args.get("page")))
    return render_template("audit/admin.html", page=page, emails=audit.emails_by_user_id(page.items),
                           event_types=audit.event_types(), event_type=event_type.strip(), email=email.strip())
