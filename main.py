"""The Tradewarden application factory: `create_app()` wires the parts together and nothing else.

Run as `flask --app main run` or `gunicorn "main:create_app()"`. A missing or malformed secret makes
the process exit with one line naming the variable (see utils/config.py).
"""
from __future__ import annotations

import logging
import sys

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from utils import cli, crypto, database, jobs, security, sessions
from utils.config import ConfigError, load_config
from utils.errors import register_error_handlers
from utils.extensions import csrf, db, limiter, login_manager, migrate


def create_app(config: dict | None = None) -> Flask:
    """Build the app. `config` overrides environment values (tests); a bad setting exits the process."""
    app = Flask(__name__, instance_relative_config=True)
    try:
        settings = load_config(overrides=config)
    except ConfigError as error:
        if config is not None:
            raise
        raise SystemExit(f"tradewarden: configuration error: {error}") from None
    app.config.update(settings)
    app.config.update({key: value for key, value in (config or {}).items() if key not in settings})
    register_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    security.init_app(app)
    cli.init_app(app)
    return app


def register_logging(app: Flask) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")


def register_extensions(app: Flask) -> None:
    if app.config.get("TRUSTED_PROXY_COUNT"):
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=int(app.config["TRUSTED_PROXY_COUNT"]), x_proto=1)
    db.init_app(app)
    database.init_app(app)
    migrate.init_app(app, db, directory=app.config.get("MIGRATIONS_DIR", "migrations"), render_as_batch=True)
    crypto.init_app(app)
    csrf.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    sessions.init_app(app)
    jobs.init_app(app)


def register_blueprints(app: Flask) -> None:
    from routes import register_all
    register_all(app)
