"""API: trade history exports (streamed downloads), share links (public, redacted) and export jobs."""
from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, redirect, request, stream_with_context

from utils import api_auth, exports, sharing, storage
from utils.database import ID_RULE
from utils.dbtypes import iso_utc
from utils.errors import ValidationFailed
from utils.extensions import client_ip, db
from utils.openapi import error_responses, json_body, json_response, path_id, ref

bp = Blueprint("exports", __name__)

SHARE_HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Robots-Tag": "noindex"}


def file_response(plan: exports.ExportPlan, status: int = 200, headers: dict | None = None) -> Response:
    """Stream the plan's export as an attachment (the transaction is committed before the first byte)."""
    chunks = stream_with_context(exports.stream(db.session, plan))
    response = Response(chunks, status=status, mimetype=plan.media_type)
    response.headers["Content-Disposition"] = f'attachment; filename="{plan.filename}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.update(headers or {})
    return response


@bp.post("/exports")
def create_export():
    body = api_auth.json_object_body({"format", "create_share_link", "expires_in_hours", "max_accesses", "filters"})
    if body.get("create_share_link") is True:
        link, token = sharing.create_link(g.api_user, body.get("format", "csv"), body.get("filters"),
                                          body.get("expires_in_hours"), body.get("max_accesses"))
        db.session.commit()
        return jsonify(share_token=token, share_url=sharing.share_url(token), expires_at=iso_utc(link.expires_at),
                       max_accesses=link.max_accesses, trade_count=link.trade_count), 201
    _reject_share_options(body)
    plan = exports.direct_export(g.api_user, body.get("format", "csv"), body.get("filters"))
    db.session.commit()
    return file_response(plan)


def _reject_share_options(body: dict) -> None:
    if body.get("create_share_link") not in (None, False):
        raise ValidationFailed("create_share_link must be a boolean.", details={"field": "create_share_link"})
    for name in ("expires_in_hours", "max_accesses"):
        if name in body:
            raise ValidationFailed(f"{name} applies only with create_share_link.", details={"field": name})


@bp.get("/exports/share/<token>")
@api_auth.public
def open_share_link(token: str):
    limit, period = sharing.rate_limit()
    api_auth.hit_limit("share.ip", client_ip(), limit, period)
    if request.method == "HEAD":
        link = sharing.check_link(token)
        return Response(status=200, headers={**SHARE_HEADERS, "Content-Type": exports.MEDIA_TYPES[link.format]})
    plan = sharing.use_link(token)
    db.session.commit()
    return file_response(plan, headers=SHARE_HEADERS)


@bp.after_request
def _share_headers(response):
    if request.endpoint == "api.exports.open_share_link":
        response.headers.update(SHARE_HEADERS)  # errors (404/410/429) too: the URL holds a secret
    return response


@bp.delete("/exports/share/<token>")
def revoke_share_link(token: str):
    sharing.revoke_by_token(g.api_user, token)
    db.session.commit()
    return Response(status=204)


@bp.get("/exports/share-links")
def list_share_links():
    links = sharing.list_links(g.api_user)
    return jsonify(items=[sharing.serialize_link(link) for link in links], next_cursor=None)


@bp.post("/export-jobs")
def create_export_job():
    body = api_auth.json_object_body({"format", "filters"})
    job = exports.create_job(g.api_user, body.get("format", "csv"), body.get("filters"))
    accepted = exports.serialize_job(job)  # as accepted: the worker may claim it as soon as we commit
    db.session.commit()
    return jsonify(accepted), 202


@bp.get(f"/export-jobs/<{ID_RULE}:job_id>")
def get_export_job(job_id: int):
    return jsonify(exports.serialize_job(exports.get_job(g.api_user, job_id)))


@bp.get(f"/export-jobs/<{ID_RULE}:job_id>/download")
def download_export_job(job_id: int):
    stored = exports.job_file(g.api_user, job_id)
    db.session.commit()
    return stored_file_response(stored)


def stored_file_response(stored) -> Response:
    """A stored export: streamed from local storage, or a redirect to a short-lived presigned S3 URL."""
    store = storage.backend()
    url = store.download_url(stored.key, stored.filename, stored.content_type)
    if url:
        return redirect(url, code=302)
    response = Response(stream_with_context(store.open_chunks(stored.key)), mimetype=stored.content_type)
    response.headers["Content-Disposition"] = f'attachment; filename="{stored.filename}"'
    response.headers["Content-Length"] = str(stored.size)
    response.headers["Cache-Control"] = "no-store"
    return response


# --- OpenAPI ----------------------------------------------------------------------------------------

_TIME = {"type": ["string", "null"], "format": "date-time"}
_FILE_CONTENT = {"text/csv": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}},
                 "application/zip": {"schema": {"type": "string", "format": "binary"}}}
_DISPOSITION = {"Content-Disposition": {"description": '`attachment; filename="trades_export_<UTC>.<ext>"`',
                                        "schema": {"type": "string"}}}
_SHARE_RESPONSE_HEADERS = {name: {"description": f"`{value}`", "schema": {"type": "string"}}
                           for name, value in SHARE_HEADERS.items()}
_TOKEN = [{"name": "token", "in": "path", "required": True, "description": "The share token (shown once).",
           "schema": {"type": "string"}}]
_JOB_ID = [path_id("job_id", "Export job id.")]

OPENAPI_SCHEMAS = {
    "ExportFilters": {"type": "object", "additionalProperties": False, "properties": {
        "date_from": {"type": ["string", "null"], "format": "date", "description": "Opened on or after (UTC day)."},
        "date_to": {"type": ["string", "null"], "format": "date", "description": "Opened on or before (UTC day)."},
        "status": {"type": ["string", "null"], "enum": ["pending", "open", "closing", "closed", "cancelled", None]},
        "symbol": {"type": ["string", "null"], "maxLength": 32}}},
    "ExportRequest": {"type": "object", "additionalProperties": False, "properties": {
        "format": {"type": "string", "enum": ["csv", "json", "zip"], "default": "csv"},
        "create_share_link": {"type": "boolean", "default": False},
        "expires_in_hours": {"type": "integer", "minimum": 1, "maximum": 168, "default": 24},
        "max_accesses": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
        "filters": {"anyOf": [ref("ExportFilters"), {"type": "null"}]}}},
    "ShareLinkCreated": {"type": "object",
                         "required": ["share_token", "share_url", "expires_at", "max_accesses", "trade_count"],
                         "properties": {"share_token": {"type": "string", "description": "Shown only once."},
                                        "share_url": {"type": "string"},
                                        "expires_at": {"type": "string", "format": "date-time"},
                                        "max_accesses": {"type": "integer"}, "trade_count": {"type": "integer"}}},
    "ShareLink": {"type": "object", "required": ["id", "token_prefix", "format", "state", "accessed_count",
                                                 "max_accesses", "expires_at"],
                  "properties": {"id": {"type": "integer"}, "token_prefix": {"type": "string"},
                                 "format": {"type": "string", "enum": ["csv", "json", "zip"]},
                                 "filters": {"type": "object"}, "trade_count": {"type": "integer"},
                                 "state": {"type": "string", "enum": ["active", "revoked", "expired", "used_up"]},
                                 "created_at": _TIME, "expires_at": _TIME, "max_accesses": {"type": "integer"},
                                 "accessed_count": {"type": "integer"}, "last_accessed_at": _TIME,
                                 "revoked_at": _TIME}},
    "ShareLinkList": {"type": "object", "required": ["items", "next_cursor"],
                      "properties": {"items": {"type": "array", "items": ref("ShareLink")},
                                     "next_cursor": {"type": ["string", "null"]}}},
    "ExportJobRequest": {"type": "object", "additionalProperties": False, "properties": {
        "format": {"type": "string", "enum": ["csv", "json", "zip"], "default": "csv"},
        "filters": {"anyOf": [ref("ExportFilters"), {"type": "null"}]}}},
    "ExportJob": {"type": "object", "required": ["id", "format", "status", "rows_done", "rows_total", "percent"],
                  "properties": {"id": {"type": "integer"},
                                 "format": {"type": "string", "enum": ["csv", "json", "zip"]},
                                 "status": {"type": "string",
                                            "enum": ["queued", "running", "done", "failed", "expired"]},
                                 "filters": {"type": "object"}, "rows_done": {"type": "integer"},
                                 "rows_total": {"type": "integer"}, "percent": {"type": "integer"},
                                 "error": {"type": ["string", "null"]}, "created_at": _TIME, "finished_at": _TIME,
                                 "expires_at": _TIME, "filename": {"type": ["string", "null"]},
                                 "size": {"type": ["integer", "null"]}}},
}

OPENAPI_PATHS = {
    "/exports": {"post": {
        "summary": "Export your trades (streamed file), or create a redacted public share link",
        "operationId": "createExport", "requestBody": json_body(ref("ExportRequest")),
        "responses": {"200": {"description": "The export file (attachment).", "headers": _DISPOSITION,
                              "content": _FILE_CONTENT},
                      "201": json_response("A share link; the token is shown only here.", ref("ShareLinkCreated")),
                      **error_responses(400, 401, 422, 429)}}},
    "/exports/share/{token}": {
        "get": {"summary": "Open a share link (public, rate-limited per IP): the redacted export; uses one access",
                "operationId": "openShareLink", "security": [], "parameters": _TOKEN,
                "responses": {"200": {"description": "The redacted export file.",
                                      "headers": {**_DISPOSITION, **_SHARE_RESPONSE_HEADERS},
                                      "content": _FILE_CONTENT},
                              **error_responses(400, 404, 410, 429)}},
        "delete": {"summary": "Revoke a share link (owner only)", "operationId": "revokeShareLink",
                   "parameters": _TOKEN,
                   "responses": {"204": {"description": "Revoked (also when it already was)."},
                                 **error_responses(401, 403, 404, 429)}}},
    "/exports/share-links": {"get": {
        "summary": "Your share links with their use counts", "operationId": "listShareLinks",
        "responses": {"200": json_response("Your links, newest first.", ref("ShareLinkList")),
                      **error_responses(401, 429)}}},
    "/export-jobs": {"post": {
        "summary": "Start a background export (for large histories)", "operationId": "createExportJob",
        "requestBody": json_body(ref("ExportJobRequest")),
        "responses": {"202": json_response("The queued job.", ref("ExportJob")),
                      **error_responses(400, 401, 422, 429)}}},
    "/export-jobs/{job_id}": {"get": {
        "summary": "An export job and its progress", "operationId": "getExportJob", "parameters": _JOB_ID,
        "responses": {"200": json_response("The job.", ref("ExportJob")), **error_responses(401, 404, 429)}}},
    "/export-jobs/{job_id}/download": {"get": {
        "summary": "Download a finished job's file (local storage: the file; S3: a redirect to a presigned URL)",
        "operationId": "downloadExportJob", "parameters": _JOB_ID,
        "responses": {"200": {"description": "The export file.", "headers": _DISPOSITION, "content": _FILE_CONTENT},
                      "302": {"description": "Redirect to a presigned URL (S3 storage), valid for 5 minutes.",
                              "headers": {"Location": {"schema": {"type": "string"}}}},
                      **error_responses(401, 404, 410, 429)}}},
}
