"""Risk limits: each denial has its own code and the numbers that broke it; settings are validated."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

ACCOUNT_EQUITY = Decimal("100000")


def _account(equity="100000", buying_power="100000"):
    from utils.brokers.base import AccountSnapshot
    return AccountSnapshot(cash=Decimal(buying_power), buying_power=Decimal(buying_power), equity=Decimal(equity))


def _proposal(quantity="10", price="100", stop=None, symbol="AAPL", direction="long", multiplier="1"):
    from utils.risk import Proposal
    return Proposal(symbol=symbol, direction=direction, quantity=Decimal(quantity), entry_price=Decimal(price),
                    stop_loss_price=Decimal(stop) if stop else None, multiplier=Decimal(multiplier))


def _denial(user, proposal, account=None):
    from utils import risk
    from utils.errors import RiskLimitExceeded
    with pytest.raises(RiskLimitExceeded) as caught:
        risk.check_order(user, proposal, account or _account())
    assert caught.value.status == 422
    return caught.value


def test_an_order_within_every_limit_passes(db, user):
    from utils import risk
    risk.check_order(user, _proposal(quantity="10", price="100", stop="95"), _account())


def test_buying_power_denial_names_the_numbers(db, user):
    error = _denial(user, _proposal(quantity="100", price="100", stop="99.9"), _account(buying_power="5000"))
    assert error.code == "risk.buying_power"
    assert error.details["order_notional"] == "10000" and error.details["buying_power"] == "5000"


def test_max_risk_per_trade_uses_the_given_stop(db, user):
    # 2% of 100,000 = 2,000 allowed; (100 - 80) x 150 = 3,000 at risk.
    error = _denial(user, _proposal(quantity="150", price="100", stop="80"))
    assert error.code == "risk.max_risk_per_trade"
    assert error.details["risk"] == "3000" and error.details["limit"] == "2000"


def test_max_risk_per_trade_falls_back_to_the_default_stop(db, user):
    # default stop 5%: 100 → 95; 5 x 500 = 2,500 > 2,000 (notional 50,000 would also break concentration).
    from utils import risk
    risk.update_limits(user, {"max_concentration_pct": "100"})
    error = _denial(user, _proposal(quantity="500", price="100"))
    assert error.code == "risk.max_risk_per_trade" and error.details["stop_price"] == "95"


def test_options_count_one_hundred_shares_per_contract(db, user):
    error = _denial(user, _proposal(quantity="10", price="5", stop="1", multiplier="100"))
    assert error.code == "risk.max_risk_per_trade" and error.details["risk"] == "4000"


def test_daily_trade_limit_counts_todays_orders(db, user, make_order):
    from utils import risk
    risk.update_limits(user, {"daily_trade_limit": 2})
    make_order(status="filled")
    make_order(status="submitted")
    make_order(status="rejected")  # refused orders do not count
    error = _denial(user, _proposal(stop="99"))
    assert error.code == "risk.daily_trade_limit" and error.details == {"orders_today": "2", "limit": "2"}


def test_daily_notional_limit(db, user, make_order):
    from utils import risk
    risk.update_limits(user, {"daily_notional_limit": "5000"})
    make_order(status="submitted", quantity="30", limit_price=Decimal("100"))
    error = _denial(user, _proposal(quantity="25", price="100", stop="99"))
    assert error.code == "risk.daily_notional_limit"
    assert error.details["notional_today"] == "3000" and error.details["order_notional"] == "2500"


def test_concentration_counts_the_open_position(db, user, make_order):
    from models import Trade
    entry = make_order(status="filled", quantity="200")
    trade = db.session.get(Trade, entry.trade_id)
    trade.status, trade.quantity, trade.entry_price = "open", Decimal("200"), Decimal("100")
    db.session.commit()
    error = _denial(user, _proposal(quantity="60", price="100", stop="99"))
    assert error.code == "risk.concentration"
    assert error.details["exposure_after"] == "26000" and error.details["limit"] == "25000"


def test_daily_loss_limit_blocks_new_entries(db, user, make_order):
    from models import Trade
    entry = make_order(status="filled")
    trade = db.session.get(Trade, entry.trade_id)
    trade.status, trade.realized_pnl, trade.closed_at = "closed", Decimal("-5000"), datetime.now(timezone.utc)
    db.session.commit()
    error = _denial(user, _proposal(stop="99"))
    assert error.code == "risk.daily_loss_limit" and error.details["realized_loss_today"] == "5000"


def test_limits_round_trip_and_reject_out_of_range_values(db, user):
    from utils import risk
    from utils.errors import ValidationFailed
    settings = risk.update_limits(user, {"max_risk_per_trade_pct": "1.5", "daily_trade_limit": "10"})
    assert risk.limits_to_dict(settings)["max_risk_per_trade_pct"] == "1.5"
    assert risk.limits_to_dict(settings)["daily_trade_limit"] == 10
    for field, bad in [("max_risk_per_trade_pct", "0"), ("max_concentration_pct", "101"),
                       ("daily_trade_limit", "2.5"), ("daily_notional_limit", "abc"), ("default_stop_pct", True),
                       ("daily_loss_limit_pct", "NaN"), ("unknown", "1")]:
        with pytest.raises(ValidationFailed) as caught:
            risk.update_limits(user, {field: bad})
        assert caught.value.details["field"] == field


def test_order_requests_are_validated_field_by_field():
    from utils import orders
    from utils.errors import ValidationFailed
    good = {"symbol": "AAPL", "side": "buy", "quantity": "10", "type": "limit", "limit_price": "101.25",
            "time_in_force": "day"}
    assert orders.parse_order_request(good).limit_price == Decimal("101.25")
    for field, bad in [("symbol", "aa$"), ("side", "hold"), ("quantity", "-1"), ("quantity", "1.5"),
                       ("quantity", True), ("type", "iceberg"), ("limit_price", None), ("limit_price", "1e400"),
                       ("time_in_force", "forever"), ("client_order_id", "x" * 65), ("instruction", "SELL"),
                       ("stop_loss_price", "0"), ("broker_connection_id", "abc")]:
        with pytest.raises(ValidationFailed) as caught:
            orders.parse_order_request({**good, field: bad})
        assert caught.value.details["field"] == field, (field, bad)
    with pytest.raises(ValidationFailed) as caught:
        orders.parse_order_request({**good, "type": "market"})
    assert caught.value.details["field"] == "limit_price"
