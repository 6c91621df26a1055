"""A Schwab connection linked before the test starts, for tests that trade at the fake Schwab.

Import the fixtures into a test module (`from tests.trading.linked_schwab import app_config, schwab_order,
schwab_port  # noqa: F401`): app_config points SCHWAB_* at `schwab_port`, where nothing listens until the test
starts `tests.fakes.schwab.linked_server(schwab_port)`; order retries are 0.05 s apart, doubling.
"""
from __future__ import annotations

import json
import time
from datetime import timedelta
from decimal import Decimal

import pytest

from tests.conftest import base_config, free_port
from tests.fakes import schwab as fake_schwab

RETRY_BASE = Decimal("0.05")


@pytest.fixture
def app_config(redis_server, database_url, tmp_path, schwab_port) -> dict:
    return base_config(redis_server.url, database_url, STORAGE_DIR=str(tmp_path / "files"),
                       ORDERS_RETRY_BASE_SECONDS=str(RETRY_BASE),
                       **fake_schwab.settings_for(f"http://127.0.0.1:{schwab_port}"))


@pytest.fixture
def schwab_port() -> int:
    """The loopback port the fake Schwab listens on, when a test starts it (nothing listens there before)."""
    return free_port()


@pytest.fixture
def schwab_order(db, user):
    """A committed pending AAPL market order for 10 on a linked Schwab connection (token valid for an hour;
    the fake's `linked_server` knows it)."""
    from models import Broker, BrokerAccount, BrokerConnection, Order
    from utils import trades
    from utils.dbtypes import utcnow
    token = {"access_token": fake_schwab.LINKED_ACCESS_TOKEN, "refresh_token": fake_schwab.LINKED_REFRESH_TOKEN,
             "token_type": "Bearer", "expires_at": int(time.time()) + 3600}
    connection = BrokerConnection(user_id=user.id, broker=Broker.SCHWAB, token_set=json.dumps(token),
                                  token_expires_at=utcnow() + timedelta(hours=1))
    db.session.add(connection)
    db.session.flush()
    account = fake_schwab.ACCOUNTS[0]
    db.session.add(BrokerAccount(user_id=user.id, connection_id=connection.id,
                                 account_number=account["accountNumber"], account_hash=account["hashValue"],
                                 last4=account["accountNumber"][-4:], name="Schwab brokerage"))
    order = Order(user_id=user.id, broker_connection_id=connection.id, client_order_id=f"schwab-{time.time_ns()}",
                  symbol="AAPL", asset_type="equity", side="buy", instruction="BUY", order_type="market",
                  quantity=Decimal("10"), time_in_force="day", status="pending", purpose="entry")
    db.session.add(order)
    db.session.flush()
    order.trade_id = trades.create_pending(order, "long")
    db.session.commit()
    return order
