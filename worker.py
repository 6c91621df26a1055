"""The Celery worker and beat entry point: `celery -A worker worker` and `celery -A worker beat`.

Tasks are thin: they take ids, call one service and commit (STYLE 4). Their names live in utils/jobs.py.
"""
from celery.signals import worker_process_init

from main import create_app
from utils.extensions import db

flask_app = create_app()
celery = flask_app.extensions["celery"]


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    """A forked worker process must not share the parent's database connections."""
    with flask_app.app_context():
        db.engine.dispose()
