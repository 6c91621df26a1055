"""The bare frame an order crosses, for benchmarks/orders.py to compare with: a Flask POST that inserts one
row and enqueues one Celery task, and a task that marks the row filled. The same gunicorn workers, the same
Celery reliability settings as Tradewarden (utils.jobs.celery_settings) and the same SQLite tuning; no
authentication, validation, risk check, broker or trade. What Tradewarden does per order costs what it adds
to this.

web:    gunicorn -k gthread ... "benchmarks.floor.app:app"
worker: celery -A benchmarks.floor.app:celery worker -Q orders
Both read FLOOR_DATABASE (a SQLite file with the `orders` table of `create_schema`) and FLOOR_REDIS_URL.
"""
from __future__ import annotations

import os
import time

from celery import Celery
from flask import Flask, jsonify, request
from sqlalchemy import create_engine, event, text

from utils.jobs import celery_settings

engine = create_engine(f"sqlite:///{os.environ['FLOOR_DATABASE']}", pool_size=16)
PLACE = text("INSERT INTO orders (client_order_id, symbol, quantity, status, created_at) "
             "VALUES (:client_order_id, :symbol, :quantity, 'pending', :now)")
FILL = text("UPDATE orders SET status = 'filled', completed_at = :now WHERE id = :id AND status = 'pending'")


@event.listens_for(engine, "connect")
def _tune(dbapi_connection, _record) -> None:
    for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL"):
        dbapi_connection.execute(f"PRAGMA {pragma}")


def create_schema() -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, client_order_id TEXT UNIQUE, "
                                "symbol TEXT, quantity TEXT, status TEXT, created_at REAL, completed_at REAL)"))


celery = Celery("floor")
celery.config_from_object(celery_settings({"REDIS_URL": os.environ["FLOOR_REDIS_URL"]}))


@celery.task(name="floor.execute")
def execute(order_id: int) -> None:
    with engine.begin() as connection:
        connection.execute(FILL, {"id": order_id, "now": time.time()})


app = Flask(__name__)


@app.post("/api/v1/orders")
def place():
    body = request.get_json()
    with engine.begin() as connection:
        order_id = connection.execute(PLACE, {"client_order_id": body["client_order_id"], "symbol": body["symbol"],
                                              "quantity": body["quantity"], "now": time.time()}).lastrowid
    celery.send_task("floor.execute", args=[order_id], queue="orders")
    return jsonify({"id": order_id, "status": "pending"}), 202
