"""Fixtures for the export tests: a trade history written straight through the models, and API keys."""
from __future__ import annotations

import itertools
import subprocess
import sys
import time
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import requests

_serial = itertools.count(1)


@dataclass
class History:
    """What make_history wrote, including every identifier a redacted export must not contain."""

    user: object
    trades: list = field(default_factory=list)
    orders: list = field(default_factory=list)
    fills: list = field(default_factory=list)
    account_number: str = ""
    connection_id: int = 0

    def identifiers(self) -> list[str]:
        """Strings that identify the owner or their broker records."""
        found = [self.user.email, self.account_number]
        found += [order.client_order_id for order in self.orders] + [order.broker_order_id for order in self.orders]
        found += [fill.broker_execution_id for fill in self.fills]
        return found


@pytest.fixture
def make_history(db):
    """make_history(user, count=3, symbol="AAPL", start=...) → History with trades, orders and fills, committed."""
    from models import (AssetType, Broker, BrokerAccount, BrokerConnection, CloseReason, Fill, Order, OrderPurpose,
                        OrderSide, OrderStatus, OrderType, TimeInForce, Trade, TradeSide, TradeStatus)

    def factory(user, count: int = 3, symbol: str = "AAPL", start: datetime | None = None,
                status: TradeStatus = TradeStatus.CLOSED, strategy_tag: str | None = "swing"):
        start = start or datetime(2026, 3, 2, 14, 30, 15, 250000, tzinfo=timezone.utc)
        connection = BrokerConnection(user_id=user.id, broker=Broker.PAPER)
        db.session.add(connection)
        db.session.flush()
        account_number = f"ACCT{secrets.randbelow(10**9):09d}"
        db.session.add(BrokerAccount(user_id=user.id, connection_id=connection.id, account_number=account_number,
                                     last4=account_number[-4:], name="Main"))
        history = History(user=user, account_number=account_number, connection_id=connection.id)
        for index in range(count):
            opened = start + timedelta(days=index, seconds=index)
            pnl = Decimal("-12.5") if index % 2 else Decimal("40.125")
            trade = Trade(user_id=user.id, broker_connection_id=connection.id, symbol=symbol,
                          asset_type=AssetType.EQUITY, side=TradeSide.LONG, status=status, quantity=Decimal("10"),
                          exit_quantity=Decimal("10"),
                          entry_price=Decimal("101.25"), exit_price=Decimal("100.000001"), fees=Decimal("0.35"),
                          stop_loss_price=Decimal("95"), take_profit_price=Decimal("120.5"),
                          close_reason=CloseReason.MANUAL if status == TradeStatus.CLOSED else None,
                          realized_pnl=pnl, strategy_tag=strategy_tag, opened_at=opened,
                          closed_at=opened + timedelta(hours=3) if status == TradeStatus.CLOSED else None)
            db.session.add(trade)
            db.session.flush()
            history.trades.append(trade)
            for purpose, side in ((OrderPurpose.ENTRY, OrderSide.BUY), (OrderPurpose.EXIT, OrderSide.SELL)):
                serial = next(_serial)
                order = Order(user_id=user.id, broker_connection_id=connection.id,
                              client_order_id=f"cli-{secrets.token_hex(8)}",
                              broker_order_id=f"brk-{secrets.token_hex(8)}",
                              symbol=symbol, asset_type=AssetType.EQUITY, side=side, instruction=side.value.upper(),
                              order_type=OrderType.MARKET, quantity=Decimal("10"), time_in_force=TimeInForce.DAY,
                              purpose=purpose, status=OrderStatus.FILLED, filled_quantity=Decimal("10"),
                              average_fill_price=Decimal("101.25"), trade_id=trade.id, submitted_at=opened)
                db.session.add(order)
                db.session.flush()
                history.orders.append(order)
                fill = Fill(user_id=user.id, order_id=order.id,
                            broker_execution_id=f"exe-{serial}-{secrets.token_hex(6)}", quantity=Decimal("10"),
                            price=Decimal("101.25"), fee=Decimal("0.175"), executed_at=opened)
                db.session.add(fill)
                db.session.flush()
                history.fills.append(fill)
        db.session.commit()
        return history

    return factory


@pytest.fixture
def make_bearer(db):
    """make_bearer(user) → Authorization headers with a fresh API key of that user."""
    from utils import api_auth

    def factory(user) -> dict:
        _key, secret = api_auth.create_api_key(user, "exports-test", None)
        db.session.commit()
        return {"Authorization": f"Bearer {secret}"}

    return factory


@pytest.fixture
def owner(make_user):
    return make_user()


@pytest.fixture
def headers(owner, make_bearer):
    return make_bearer(owner)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """A real S3-compatible server (moto) on a free loopback port."""
    from tests.conftest import free_port
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(url + "/moto-api/", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}  # explicit credentials: boto3 never asks instance metadata
