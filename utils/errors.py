"""One typed family of domain errors (STYLE 8).

Services raise these; broker adapters translate vendor failures into them; `register_error_handlers`
renders them as JSON under /api/ and as a flashed message (or a small page) elsewhere.
"""
from __future__ import annotations


class DomainError(Exception):
    """An error with an HTTP status, a machine-readable code and a message safe to show."""

    status = 400
    code = "bad_request"
    message = "The request could not be processed."

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 details: dict | None = None, status: int | None = None, headers: dict | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.code = code or self.code
        self.details = details or {}
        self.status = status or self.status
        self.headers = headers or {}

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ValidationFailed(DomainError):
    status, code, message = 422, "validation_failed", "Some fields are not valid."


class BadRequest(DomainError):
    status, code, message = 400, "bad_request", "The request is malformed."


class Unauthorized(DomainError):
    status, code, message = 401, "unauthorized", "Authentication is required."


class Forbidden(DomainError):
    status, code, message = 403, "forbidden", "You may not do that."


class NotFound(DomainError):
    status, code, message = 404, "not_found", "Not found."


class Conflict(DomainError):
    status, code, message = 409, "conflict", "The object is not in a state that allows this."


class InvalidTransition(Conflict):
    code, message = "invalid_transition", "That state change is not allowed."


class Gone(DomainError):
    status, code, message = 410, "gone", "This is no longer available."


class RiskLimitExceeded(DomainError):
    status, code, message = 422, "risk_limit_exceeded", "The order breaks a risk limit."


class RateLimited(DomainError):
    """Too many requests; `headers` carry Retry-After and X-RateLimit-*."""

    status, code, message = 429, "rate_limited", "Too many requests; slow down and try again later."


class DependencyUnavailable(DomainError):
    status, code, message = 503, "dependency_unavailable", "A service Tradewarden depends on is down."


class DecryptionFailed(DomainError):
    """Stored ciphertext does not verify under any configured key (tampered, or key removed)."""

    status, code, message = 409, "decryption_failed", "A stored secret could not be decrypted; enter it again."


class BrokerError(DomainError):
    status, code, message = 502, "broker_error", "The broker reported an error."


class BrokerUnavailable(BrokerError):
    """The broker could not be reached or answered 5xx/429: the only retryable broker error.

    `may_have_arrived` is set when a request that changes something (an order sent) failed in a way that
    does not prove the broker never got it: a read timeout, a dropped connection, a 5xx answer.
    `settles_earlier_sends` is set when it came from the send itself, after any earlier send was ruled out."""

    status, code, message = 503, "broker_unavailable", "The broker is unreachable right now."
    may_have_arrived = False
    settles_earlier_sends = False


class BrokerAuthExpired(BrokerError):
    status, code, message = 409, "broker_auth_expired", "The broker link has expired; link the account again."


class BrokerRejected(BrokerError):
    status, code, message = 422, "broker_rejected", "The broker rejected the order."


class InsufficientFunds(BrokerRejected):
    code, message = "insufficient_funds", "Not enough buying power for this order."


class InvalidSymbol(BrokerRejected):
    code, message = "invalid_symbol", "Unknown symbol."


class OrderNotFound(BrokerError):
    status, code, message = 404, "order_not_found", "The broker does not know this order."


class OrderNotCancelable(BrokerError):
    status, code, message = 409, "order_not_cancelable", "The order can no longer be cancelled."


# --- rendering --------------------------------------------------------------------------------

def wants_json() -> bool:
    """True for the JSON API and for clients that ask for JSON only."""
    from flask import request
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and not request.accept_mimetypes["text/html"]


def error_response(status: int, code: str, message: str, details: dict | None = None, headers=None):
    """Render one error as JSON (API) or as a flashed message back on the page (forms)."""
    from flask import flash, jsonify, redirect, render_template, request
    if wants_json():
        response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
        response.status_code = status
    elif request.method in {"POST", "PUT", "PATCH", "DELETE"} and status in {400, 409, 422} \
            and request.referrer and _same_origin(request.referrer):
        flash(message, "error")
        response = redirect(request.referrer)
    else:
        response = render_template("error.html", status=status, code=code, message=message), status
        from flask import make_response
        response = make_response(response)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status == 401 and _is_api_request():
        response.headers.setdefault("WWW-Authenticate", 'Bearer realm="tradewarden"')
    return response


def _is_api_request() -> bool:
    from flask import has_request_context, request
    return has_request_context() and request.path.startswith("/api/")


def _audit_api_denial(error) -> None:
    """Record a 401/403 of the JSON API (throttled per address and reason so a flood cannot fill the log)."""
    from flask import g, request

    from utils import api_auth, audit
    reason = str(error.details.get("reason") or error.code)[:64]
    if not api_auth.should_audit_denial(reason):
        return
    user = getattr(error, "audit_user_id", None) or getattr(g.get("api_user"), "id", None)
    audit.record_safely("api.authorization_denied", user=user,
                        details={"status": error.status, "reason": reason, "method": request.method,
                                 "path": request.path[:200]})


def _same_origin(url: str) -> bool:
    from urllib.parse import urlsplit
    from flask import request
    return urlsplit(url).netloc == request.host


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 410: "gone", 413: "payload_too_large", 414: "uri_too_long",
              415: "unsupported_media_type", 422: "validation_failed", 429: "rate_limited",
              500: "internal_error", 503: "service_unavailable"}


def register_error_handlers(app) -> None:
    """One place that turns every error into JSON (API) or an HTML page / flash (browser)."""
    import logging

    from flask_wtf.csrf import CSRFError
    from werkzeug.exceptions import HTTPException

    log = logging.getLogger("tradewarden.errors")

    @app.errorhandler(DomainError)
    def _domain(error: DomainError):
        if error.status >= 500:
            log.error("domain error %s: %s", error.code, error.message)
        if error.status in (401, 403) and _is_api_request():
            _audit_api_denial(error)
        return error_response(error.status, error.code, error.message, error.details,
                              headers=getattr(error, "headers", None))

    @app.errorhandler(CSRFError)
    def _csrf(error):
        from utils import audit
        audit.record_safely("security.csrf_failure", details={"reason": error.description})
        return error_response(400, "csrf_failed", "The form expired or was not sent from this site. Try again.")

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException):
        status = error.code or 500
        if status == 405 and _is_api_request() and not _path_matches_any_method(error.valid_methods or ()):
            return error_response(404, "not_found", "Not found.")
        headers = {}
        if status == 429:
            from utils import audit
            audit.record_safely("security.rate_limited", details={"limit": str(error.description)})
            retry_after = getattr(error, "retry_after", None) or _retry_after(error)
            if retry_after:
                headers["Retry-After"] = str(retry_after)
        if status == 405 and error.valid_methods:
            headers["Allow"] = ", ".join(error.valid_methods)
        message = "Too many requests; slow down and try again later." if status == 429 else error.description
        return error_response(status, HTTP_CODES.get(status, "http_error"), message, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error")
        _rollback_quietly()
        return error_response(500, "internal_error", "Something went wrong on our side. It has been logged.")


def _path_matches_any_method(methods) -> bool:
    """werkzeug answers 405 when a converter (e.g. int(min=1)) refuses the value for every rule of the path;
    then the URL names nothing, and the honest answer is 404."""
    from flask import current_app, request
    from werkzeug.exceptions import HTTPException
    adapter = current_app.url_map.bind_to_environ(request.environ)
    for method in methods:
        try:
            adapter.match(method=method)
            return True
        except HTTPException:
            continue
    return False


def _rollback_quietly() -> None:
    """A failed request must not leave a broken transaction for the error page (or the next request)."""
    try:
        from utils.extensions import db
        db.session.rollback()
    except Exception:  # noqa: BLE001 - the database itself may be what failed
        pass


def _retry_after(error) -> int | None:
    response = error.get_response()
    value = response.headers.get("Retry-After")
    return int(value) if value and value.isdigit() else None
