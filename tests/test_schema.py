"""The migrations build exactly the schema the models describe (SQLite, and PostgreSQL when asked)."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade

from main import create_app
from tests.conftest import ROOT, base_config
from utils.extensions import db


def schema_differences(app):
    with app.app_context():
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, db.metadata)


def test_empty_database_upgrades_to_head_with_no_drift(tmp_path, redis_server):
    """Upgrading an empty database to head leaves nothing for autogenerate to add, drop or alter."""
    app = create_app(base_config(redis_server.url, f"sqlite:///{tmp_path / 'fresh.db'}"))
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
    assert schema_differences(app) == []


def test_drift_is_detected_when_models_and_schema_disagree(tmp_path, redis_server):
    """The comparison above can fail: an empty database differs from the models."""
    app = create_app(base_config(redis_server.url, f"sqlite:///{tmp_path / 'empty.db'}"))
    assert any(diff[0] == "add_table" for diff in schema_differences(app))


def test_postgresql_upgrades_to_head_with_no_drift(redis_server, postgres_server):
    app = create_app(base_config(redis_server.url, postgres_server.new_database()))
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
    assert schema_differences(app) == []
    with app.app_context():
        db.engine.dispose()
