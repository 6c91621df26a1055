"""/exports: download your trade history, share a redacted copy, run and download background export jobs."""
from __future__ import annotations

from flask import Blueprint, jsonify, make_response, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, StringField
from wtforms.validators import NumberRange, Optional

from models import TradeStatus
from routes.api.exports import file_response, stored_file_response
from utils import exports, sharing
from utils.database import ID_RULE
from utils.extensions import db

bp = Blueprint("exports_page", __name__, url_prefix="/exports")

FORMATS = [("csv", "CSV"), ("json", "JSON"), ("zip", "ZIP (trades, orders, fills, manifest)")]


class ExportForm(FlaskForm):
    format = SelectField("Format", choices=FORMATS, default="csv")
    date_from = DateField("Opened from", validators=[Optional()])
    date_to = DateField("Opened until", validators=[Optional()])
    status = SelectField("Status", choices=[("", "Any")] + [(s.value, s.value) for s in TradeStatus], default="")
    symbol = StringField("Symbol", validators=[Optional()])

    def unsafe_filters(self) -> dict:
        return {"date_from": self.date_from.data, "date_to": self.date_to.data, "status": self.status.data or None,
                "symbol": self.symbol.data or None}


class ShareForm(ExportForm):
    expires_in_hours = IntegerField("Expires after (hours)", default=sharing.DEFAULT_HOURS,
                                    validators=[NumberRange(min=1, max=sharing.MAX_HOURS)])
    max_accesses = IntegerField("Number of downloads", default=sharing.DEFAULT_ACCESSES,
                                validators=[NumberRange(min=1, max=sharing.MAX_ACCESSES)])


class ActionForm(FlaskForm):
    """Revoke: only the CSRF token."""


def _page(status: int = 200, new_link: dict | None = None, **forms):
    html = render_template(
        "exports/index.html", export_form=forms.get("export_form") or ExportForm(prefix="export"),
        share_form=forms.get("share_form") or ShareForm(prefix="share"),
        job_form=forms.get("job_form") or ExportForm(prefix="job"), action_form=ActionForm(),
        jobs=[exports.serialize_job(job) for job in exports.list_jobs(current_user)],
        links=[sharing.serialize_link(link) for link in sharing.list_links(current_user)], new_link=new_link)
    response = make_response(html, status)
    response.headers["Cache-Control"] = "no-store"  # a new link's URL is shown only once
    return response


@bp.get("")
@login_required
def index():
    return _page()


@bp.post("/download")
@login_required
def download():
    form = ExportForm(prefix="export")
    if not form.validate_on_submit():
        return _page(422, export_form=form)
    plan = exports.direct_export(current_user, form.format.data, form.unsafe_filters())
    db.session.commit()
    return file_response(plan)


@bp.post("/share")
@login_required
def share():
    form = ShareForm(prefix="share")
    if not form.validate_on_submit():
        return _page(422, share_form=form)
    link, token = sharing.create_link(current_user, form.format.data, form.unsafe_filters(),
                                      form.expires_in_hours.data, form.max_accesses.data)
    db.session.commit()
    return _page(201, new_link={**sharing.serialize_link(link), "url": sharing.share_url(token)})


@bp.post(f"/share-links/<{ID_RULE}:link_id>/revoke")
@login_required
def revoke(link_id: int):
    if ActionForm().validate_on_submit():
        sharing.revoke_by_id(current_user, link_id)
        db.session.commit()
    return redirect(url_for(".index"))


@bp.post("/jobs")
@login_required
def start_job():
    form = ExportForm(prefix="job")
    if not form.validate_on_submit():
        return _page(422, job_form=form)
    exports.create_job(current_user, form.format.data, form.unsafe_filters())
    db.session.commit()
    return redirect(url_for(".index"))


@bp.get(f"/jobs/<{ID_RULE}:job_id>/progress")
@login_required
def job_progress(job_id: int):
    """Polled by static/exports.js; the page itself shows the same numbers on reload."""
    return jsonify(exports.serialize_job(exports.get_job(current_user, job_id)))


@bp.get(f"/jobs/<{ID_RULE}:job_id>/download")
@login_required
def job_download(job_id: int):
    stored = exports.job_file(current_user, job_id)
    db.session.commit()
    return stored_file_response(stored)
