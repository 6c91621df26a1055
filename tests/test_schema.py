"""The migrations build exactly the schema the models describe (SQLite, and PostgreSQL when asked)."""
import os

import pytest
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


@pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL"), reason="TEST_DATABASE_URL not set")
def test_postgresql_upgrades_to_head_with_no_drift(redis_server):
    app = create_app(base_config(redis_server.url, os.environ["TEST_DATABASE_URL"]))
    with app.app_context():
        db.drop_all()
        with db.engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        upgrade(directory=str(ROOT / "migrations"))
    assert schema_differences(app) == []
