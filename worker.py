"""The Celery worker and beat entry point: `celery -A worker worker` and `celery -A worker beat`.

Tasks are thin: they take ids, call one service and commit (STYLE 4). Their names live in utils/jobs.py;
the beat schedule at the bottom uses the same names. Each feature keeps its tasks in its own section.
"""
from celery.signals import worker_process_init

from main import create_app
from utils import jobs
from utils.extensions import db

flask_app = create_app()
celery = flask_app.extensions["celery"]
BEAT_SCHEDULE: dict[str, dict] = {}


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    """A forked worker process must not share the parent's database connections."""
    with flask_app.app_context():
        db.engine.dispose()


# --- market data (section owner: market data / paper broker) ---------------------------------


# --- orders and trades (section owner: trading core) -----------------------------------------


# --- broker links (section owner: broker linking) --------------------------------------------


# --- exports (section owner: exports and sharing) --------------------------------------------


celery.conf.beat_schedule = BEAT_SCHEDULE
