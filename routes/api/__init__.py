"""The JSON API under /api/v1 (Bearer credentials only; no cookies, no CSRF).

Each sub-module defines its own `bp`; they are nested under this one so they share its prefix,
its authentication and its JSON error format.
"""
from __future__ import annotations

from importlib import import_module

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

SUBMODULES = ("auth", "api_keys", "orders", "trades", "market", "settings", "admin", "brokers", "exports", "meta")

for _name in SUBMODULES:
    bp.register_blueprint(import_module(f"routes.api.{_name}").bp)
