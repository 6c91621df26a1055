"""An option past its expiration trades no more: its price is its intrinsic value at the underlying's last
price, the paper broker takes only a market order that closes a held contract (filled at that value, with no
slippage or fee), and a resting order to open one expires with it."""
from __future__ import annotations

from decimal import Decimal

import pytest
from tests.market.conftest import age_the_price, let_expire, order_request
from utils.errors import BrokerRejected

LIVE_CALL, EXPIRED_CALL = "AAPL301220C00150000", "AAPL240119C00150000"  # the same contract, before and after
EXPIRED_PUT = "AAPL240119P00150000"


def quotes(*symbols):
    from utils import market_data
    return market_data.get_quotes(list(symbols), fresh=True)


def place(broker, db, **fields):
    order = broker.place_order(order_request(**fields))
    db.session.commit()
    return order


def hold_calls(broker, db, set_price, quantity="2"):
    """Buy `quantity` live calls at 5.00, then let them expire."""
    set_price(LIVE_CALL, "5.00")
    bought = place(broker, db, symbol=LIVE_CALL, quantity=quantity, instruction="BUY_TO_OPEN")
    assert bought.status == "filled"
    let_expire(db, LIVE_CALL, EXPIRED_CALL)
    return bought


# --- the settlement price -------------------------------------------------------------------------

def test_an_expired_option_is_priced_at_its_intrinsic_value_from_the_underlying(app, set_price):
    set_price("AAPL", "187.25")
    call, put, underlying = (quotes(EXPIRED_CALL, EXPIRED_PUT, "AAPL")[s] for s in (EXPIRED_CALL, EXPIRED_PUT, "AAPL"))
    assert (call.bid, call.ask, call.last) == (Decimal("37.25"),) * 3
    assert (put.bid, put.ask, put.last) == (Decimal(0),) * 3  # out of the money: worthless
    assert call.as_of == put.as_of == underlying.as_of


def test_a_put_in_the_money_is_worth_strike_minus_underlying(app, set_price):
    set_price("AAPL", "120.40")
    assert quotes(EXPIRED_PUT)[EXPIRED_PUT].last == Decimal("29.60")


def test_an_expired_option_without_an_underlying_price_has_no_price(app, set_price):
    set_price(EXPIRED_CALL.replace("AAPL", "MSFT"), "3.00")  # a price set on the dead contract itself counts not
    assert quotes(EXPIRED_CALL.replace("AAPL", "MSFT")) == {}


def test_a_live_option_keeps_its_own_price(app, set_price):
    set_price("AAPL", "200")
    set_price(LIVE_CALL, "4.10")
    assert quotes(LIVE_CALL)[LIVE_CALL].last == Decimal("4.10")


# --- the paper broker -----------------------------------------------------------------------------

def test_an_expired_option_cannot_be_opened(broker, db, set_price):
    set_price("AAPL", "200")
    with pytest.raises(BrokerRejected) as refused:
        place(broker, db, symbol=EXPIRED_CALL, quantity="1", instruction="BUY_TO_OPEN")
    assert refused.value.code == "option_expired"
    assert refused.value.details["expired_on"] == "2024-01-19"
    assert broker.get_positions() == []


def test_a_held_expired_contract_closes_by_market_only(broker, db, set_price):
    hold_calls(broker, db, set_price)
    set_price("AAPL", "200")
    with pytest.raises(BrokerRejected) as refused:
        place(broker, db, symbol=EXPIRED_CALL, side="sell", quantity="2", order_type="limit", limit_price="60",
              instruction="SELL_TO_CLOSE")
    assert refused.value.code == "option_expired"


class TestSettlement:
    @pytest.fixture
    def market_settings(self):
        return {"PAPER_SLIPPAGE_BPS": 10, "PAPER_FEE_PER_ORDER": "1.50", "PAPER_FEE_PER_UNIT": "0.65"}

    def test_a_market_close_settles_in_the_money_at_intrinsic_value_without_slippage_or_fee(self, broker, db,
                                                                                             set_price):
        bought = hold_calls(broker, db, set_price)
        cash_after_buying = broker.get_account().cash
        set_price("AAPL", "200")
        sold = place(broker, db, symbol=EXPIRED_CALL, side="sell", quantity="2", instruction="SELL_TO_CLOSE")
        assert sold.status == "filled" and [(f.price, f.fee) for f in sold.fills] == [(Decimal("50"), Decimal(0))]
        assert broker.get_account().cash == cash_after_buying + 2 * 100 * Decimal("50")
        assert broker.get_positions() == []
        assert bought.fills[0].fee == Decimal("1.50") + 2 * Decimal("0.65")  # a live contract still pays

    def test_a_worthless_contract_settles_at_zero(self, broker, db, set_price):
        hold_calls(broker, db, set_price)
        cash_after_buying = broker.get_account().cash
        set_price("AAPL", "140")
        sold = place(broker, db, symbol=EXPIRED_CALL, side="sell", quantity="2", instruction="SELL_TO_CLOSE")
        assert sold.status == "filled" and sold.average_fill_price == Decimal(0)
        assert [(f.price, f.fee) for f in sold.fills] == [(Decimal(0), Decimal(0))]
        assert broker.get_account().cash == cash_after_buying
        assert broker.get_positions() == []


def test_the_settlement_refuses_a_stale_underlying_price(app, broker, db, set_price):
    hold_calls(broker, db, set_price)
    set_price("AAPL", "200")
    age_the_price(app, db, "AAPL")
    with pytest.raises(BrokerRejected) as refused:
        place(broker, db, symbol=EXPIRED_CALL, side="sell", quantity="2", instruction="SELL_TO_CLOSE")
    assert refused.value.code == "stale_quote"
    assert [p.quantity for p in broker.get_positions()] == [Decimal(2)]


def test_a_resting_order_to_open_expires_with_the_contract_and_one_to_close_waits(broker, db, set_price, match):
    hold_calls(broker, db, set_price, quantity="1")
    let_expire(db, EXPIRED_CALL, LIVE_CALL)  # back before the date, to leave two orders resting
    set_price(LIVE_CALL, "5.00")
    opening = place(broker, db, symbol=LIVE_CALL, order_type="limit", limit_price="1", quantity="1",
                    time_in_force="gtc", instruction="BUY_TO_OPEN")
    closing = place(broker, db, symbol=LIVE_CALL, side="sell", order_type="limit", limit_price="9", quantity="1",
                    time_in_force="gtc", instruction="SELL_TO_CLOSE")
    let_expire(db, LIVE_CALL, EXPIRED_CALL)
    set_price("AAPL", "300")  # worth 150 now, far through the closing limit: still no fill
    assert match() == 0
    assert broker.get_order(opening.broker_order_id).status == "expired"
    assert broker.get_order(closing.broker_order_id).status == "submitted"
