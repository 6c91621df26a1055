"""Fixtures for market data and the paper broker: manual prices, a paper broker per user, order requests."""
from __future__ import annotations

import itertools
from decimal import Decimal

import pytest

from tests.conftest import base_config



@pytest.fixture
def market_settings() -> dict:
    """Extra settings for the app under test (override in a module to change fees, liquidity, …)."""
    return {}


@pytest.fixture
def app_config(redis_server, database_url, tmp_path, market_settings) -> dict:
    return base_config(redis_server.url, database_url, STORAGE_DIR=str(tmp_path / "files"), **market_settings)


@pytest.fixture
def make_broker(app, db):
    """make_broker(user) → a PaperBroker on the user's (new, committed) paper connection."""
    from utils.brokers import get_broker
    from utils.brokers.paper import ensure_paper_connection

    def factory(owner):
        connection = ensure_paper_connection(owner)
        db.session.commit()
        return get_broker(connection)

    return factory


@pytest.fixture
def broker(make_broker, user):
    return make_broker(user)


_ids = itertools.count(1)


def order_request(symbol="AAPL", side="buy", quantity="10", order_type="market", **fields):
    """An OrderRequest with a fresh client_order_id; prices and quantity given as strings."""
    from utils.brokers.base import OrderRequest
    from utils.market_data import asset_type_of
    for name in ("limit_price", "stop_price"):
        if fields.get(name) is not None:
            fields[name] = Decimal(fields[name])
    fields.setdefault("client_order_id", f"cid-{next(_ids)}")
    fields.setdefault("instruction", side.upper())
    fields.setdefault("asset_type", asset_type_of(symbol))
    return OrderRequest(symbol=symbol, side=side, quantity=Decimal(quantity), order_type=order_type, **fields)


@pytest.fixture
def match(app, db):
    """match(symbols=None) runs one matching pass (what market.tick does after moving prices) and commits."""
    from utils.brokers import paper

    def run(symbols=None) -> int:
        fills = paper.match_resting_orders(symbols)
        db.session.commit()
        return fills

    return run


@pytest.fixture
def user(make_user):
    """The trading user (example.com: every email validator accepts it)."""
    return make_user(email="paper-trader@example.com")


@pytest.fixture
def other_user(make_user):
    return make_user(email="other-trader@example.com")


def age_the_price(app, db, symbol: str) -> None:
    """Make the symbol's stored price older than QUOTE_MAX_AGE_SECONDS (the feed stopped) and drop the cache."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from models import MarketPrice
    from utils import market_data
    old = datetime.now(timezone.utc) - timedelta(seconds=app.config["QUOTE_MAX_AGE_SECONDS"] + 60)
    db.session.execute(update(MarketPrice).where(MarketPrice.symbol == symbol).values(as_of=old))
    db.session.commit()
    market_data.cache().flushdb()


def let_expire(db, live: str, expired: str) -> None:
    """The calendar passes an option's date: every row naming the `live` contract, ours and the paper broker's,
    now names `expired` (the same strike and right; only the date differs)."""
    from sqlalchemy import update

    from models import Order, PaperOrder, PaperPosition, Trade
    for model in (Order, Trade, PaperOrder, PaperPosition):
        db.session.execute(update(model).where(model.symbol == live).values(symbol=expired))
    db.session.commit()
