"""HTTP blueprints, one per feature; thin: parse input, call one service, commit, respond."""
from __future__ import annotations

from importlib import import_module

BLUEPRINT_MODULES = (
    "routes.health", "routes.dashboard", "routes.auth", "routes.settings", "routes.audit", "routes.admin",
    "routes.api_keys", "routes.risk", "routes.orders", "routes.trades", "routes.brokers", "routes.exports",
    "routes.api",
)


def register_all(app) -> None:
    for name in BLUEPRINT_MODULES:
        app.register_blueprint(import_module(name).bp)
