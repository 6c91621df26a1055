"""Security headers on every response, HTML or JSON, success or error (DESIGN §7, issue 2 item 9)."""
from __future__ import annotations

from flask import request
from flask_login import current_user

CONTENT_SECURITY_POLICY = ("default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                           "img-src 'self' data:")
AUTHORIZE_URL_SETTINGS = ("SCHWAB_AUTHORIZE_URL", "COINBASE_AUTHORIZE_URL", "ETRADE_AUTHORIZE_URL")
_POLICY_KEY = "tradewarden.csp"
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
HSTS = "max-age=31536000; includeSubDomains"


def init_app(app) -> None:
    app.extensions[_POLICY_KEY] = content_security_policy(app.config)
    app.after_request(add_security_headers)


def content_security_policy(config) -> str:
    """The fixed policy plus form-action: our own origin and the brokers' OAuth pages.

    Browsers apply form-action to the redirect after a form post, so "connect a broker" (a POST that
    redirects to the broker's authorize page) needs those origins listed.
    """
    origins = sorted({_origin(config.get(name, "")) for name in AUTHORIZE_URL_SETTINGS} - {""})
    return f"{CONTENT_SECURITY_POLICY}; form-action 'self'{''.join(' ' + origin for origin in origins)}"


def _origin(url: str) -> str:
    from urllib.parse import urlsplit
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in {"http", "https"} and parts.netloc else ""


def add_security_headers(response):
    """Set the fixed headers; no-store on anything personal; HSTS outside local development."""
    from flask import current_app
    headers = response.headers
    headers.setdefault("Content-Security-Policy", current_app.extensions.get(_POLICY_KEY, CONTENT_SECURITY_POLICY))
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if not current_app.config.get("LOCAL_DEVELOPMENT"):
        headers.setdefault("Strict-Transport-Security", HSTS)
    if _is_personal(response):
        headers["Cache-Control"] = "no-store"
        headers["Pragma"] = "no-cache"
    return response


def _is_personal(response) -> bool:
    if request.path.startswith("/static/"):
        return False
    if request.path.startswith("/api/") or request.authorization is not None:
        return True
    try:
        return bool(current_user and current_user.is_authenticated)
    except Exception:  # no login manager context (e.g. error during start-up): treat as personal
        return True
