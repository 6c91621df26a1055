"""The JSON API under /api/v1 (Bearer credentials only; no cookies, no CSRF).

Each sub-module defines its own `bp`; they are nested under this one so they share its prefix,
its authentication (`utils.api_auth.authenticate_request`, skipped for views marked
`utils.api_auth.public`), its per-credential rate limit and its JSON error format.
"""
from __future__ import annotations

from importlib import import_module

from flask import Blueprint, g

from utils import api_auth
from utils.extensions import csrf, db, login_manager

bp = Blueprint("api", __name__, url_prefix="/api/v1")

SUBMODULES = ("auth", "api_keys", "orders", "trades", "market", "settings", "admin", "brokers", "exports", "meta")

csrf.exempt(bp)
for _name in SUBMODULES:
    _child = import_module(f"routes.api.{_name}").bp
    csrf.exempt(_child)  # Flask-WTF matches the nested blueprint itself, not its parent
    bp.register_blueprint(_child)


@bp.record_once
def _wire(state) -> None:
    api_auth.init_app(state.app)


_REQUEST_STATE = ("_login_user", "api_user", "api_credential", "tw_endpoint_limit", "tw_credential_limit")


@bp.before_request
def _authenticate() -> None:
    # A browser cookie never authenticates an API call: current_user stays anonymous here.
    g._login_user = login_manager.anonymous_user()
    if api_auth.authenticate_request():
        db.session.commit()  # the once-a-minute usage statistics of the key, before the view runs


@bp.after_request
def _rate_limit_headers(response):
    return api_auth.add_rate_limit_headers(response)


@bp.teardown_request
def _teardown(_error) -> None:
    _forget_request_state()  # `g` outlives a request when an app context was already pushed (tests, CLI)


def _forget_request_state() -> None:
    for name in _REQUEST_STATE:
        g.pop(name, None)
