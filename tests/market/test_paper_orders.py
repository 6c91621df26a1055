"""Paper broker: fills for every order type (gaps, partial fills), cancel, replace, idempotency, rejections."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.market.conftest import age_the_price, order_request
from utils.errors import BrokerRejected, InsufficientFunds, InvalidSymbol, OrderNotCancelable, OrderNotFound


def place(broker, db, **fields):
    order = broker.place_order(order_request(**fields))
    db.session.commit()
    return order


def quote(symbol):
    from utils import market_data
    return market_data.get_quotes([symbol], fresh=True)[symbol]


# --- market orders -------------------------------------------------------------------------------

def test_market_buy_fills_at_the_ask_and_moves_cash_and_position(broker, db, set_price):
    set_price("AAPL", "100")
    order = place(broker, db, quantity="10")
    ask = quote("AAPL").ask
    assert order.status == "filled" and order.filled_quantity == Decimal("10")
    assert order.average_fill_price == ask and [f.price for f in order.fills] == [ask]
    account = broker.get_account()
    assert account.cash == Decimal("100000") - 10 * ask
    assert account.equity == account.cash + 10 * Decimal("100")
    [position] = broker.get_positions()
    assert (position.symbol, position.quantity, position.average_price) == ("AAPL", Decimal("10"), ask)


def test_a_marketable_order_is_written_once_already_filled_and_a_resting_one_once_open(broker, db, set_price):
    """Matched before it is stored, a new order is one INSERT as it ends up: filled at once, or resting."""
    from sqlalchemy import event
    set_price("AAPL", "100")
    written = []

    def remember(_connection, _cursor, statement, parameters, _context, _executemany):
        if " paper_orders " in f" {statement} " and not statement.startswith("SELECT"):
            values = parameters.values() if isinstance(parameters, dict) else parameters  # PostgreSQL: by name
            written.append((statement.split()[0], list(values)))

    event.listen(db.engine, "before_cursor_execute", remember)
    try:
        filled = place(broker, db, quantity="10")
        resting = place(broker, db, order_type="limit", limit_price="95")
    finally:
        event.remove(db.engine, "before_cursor_execute", remember)
    assert [kind for kind, _ in written] == ["INSERT", "INSERT"]
    assert (filled.status, filled.filled_quantity, resting.status) == ("filled", Decimal("10"), "submitted")
    assert "filled" in written[0][1] and "submitted" in written[1][1]


def test_market_sell_fills_at_the_bid_and_closes_the_position(broker, db, set_price):
    set_price("AAPL", "100")
    place(broker, db, quantity="10")
    set_price("AAPL", "110")
    sold = place(broker, db, side="sell", quantity="10")
    assert sold.status == "filled" and sold.fills[0].price == quote("AAPL").bid
    assert broker.get_positions() == []


def test_a_new_account_starts_with_the_configured_cash(broker):
    account = broker.get_account()
    assert account.cash == account.buying_power == account.equity == Decimal("100000")
    assert account.currency == "USD"


# --- limit, stop, stop-limit ---------------------------------------------------------------------

def test_limit_buy_rests_until_the_ask_reaches_it(broker, db, set_price, match):
    set_price("AAPL", "100")
    order = place(broker, db, order_type="limit", limit_price="95")
    assert order.status == "submitted" and order.fills == ()
    set_price("AAPL", "96")
    assert match() == 0
    set_price("AAPL", "94.9")  # ask 94.92 (the spread): at or below the limit now
    assert match() == 1
    filled = broker.get_order(order.broker_order_id)
    assert filled.status == "filled" and filled.average_fill_price == quote("AAPL").ask <= Decimal("95")


def test_limit_buy_after_a_gap_down_fills_at_the_better_market_price(broker, db, set_price, match):
    set_price("AAPL", "100")
    order = place(broker, db, order_type="limit", limit_price="95")
    set_price("AAPL", "80")  # gapped far below the limit
    match()
    assert broker.get_order(order.broker_order_id).average_fill_price == quote("AAPL").ask < Decimal("81")


def test_marketable_limit_fills_at_once_at_the_market_not_the_limit(broker, db, set_price):
    set_price("AAPL", "100")
    order = place(broker, db, order_type="limit", limit_price="120")
    assert order.status == "filled" and order.average_fill_price == quote("AAPL").ask


def test_limit_sell_fills_at_the_better_of_limit_and_bid(broker, db, set_price, match):
    set_price("AAPL", "100")
    place(broker, db, quantity="5")
    order = place(broker, db, side="sell", quantity="5", order_type="limit", limit_price="105")
    assert order.status == "submitted"
    set_price("AAPL", "112")  # gap up through the limit
    match()
    assert broker.get_order(order.broker_order_id).average_fill_price == quote("AAPL").bid > Decimal("105")


def test_sell_stop_after_a_gap_down_fills_at_the_worse_market_price(broker, db, set_price, match):
    set_price("AAPL", "100")
    place(broker, db, quantity="10")
    stop = place(broker, db, side="sell", quantity="10", order_type="stop", stop_price="95")
    set_price("AAPL", "96")
    assert match() == 0
    set_price("AAPL", "90")  # gapped through the stop
    assert match() == 1
    filled = broker.get_order(stop.broker_order_id)
    assert filled.status == "filled" and filled.average_fill_price == quote("AAPL").bid < Decimal("95")


def test_buy_stop_fills_at_the_market_once_the_ask_reaches_the_stop(broker, db, set_price, match):
    set_price("AAPL", "100")
    stop = place(broker, db, order_type="stop", stop_price="105")
    assert stop.status == "submitted"
    set_price("AAPL", "107")
    match()
    assert broker.get_order(stop.broker_order_id).average_fill_price == quote("AAPL").ask >= Decimal("105")


def test_stop_limit_triggers_then_rests_as_a_limit(broker, db, set_price, match):
    set_price("AAPL", "100")
    place(broker, db, quantity="10")
    order = place(broker, db, side="sell", quantity="10", order_type="stop_limit", stop_price="95",
                  limit_price="94")
    set_price("AAPL", "93")  # stop reached but the bid is below the limit: triggered, not filled
    assert match() == 0
    assert broker.get_order(order.broker_order_id).status == "submitted"
    set_price("AAPL", "94.5")  # back above the limit, but above the stop too: still a live limit
    assert match() == 1
    filled = broker.get_order(order.broker_order_id)
    assert filled.status == "filled" and filled.average_fill_price == quote("AAPL").bid >= Decimal("94")


def test_untriggered_stop_limit_does_not_fill_at_its_limit(broker, db, set_price, match):
    set_price("AAPL", "100")
    order = place(broker, db, order_type="stop_limit", stop_price="110", limit_price="111")
    assert match() == 0 and broker.get_order(order.broker_order_id).status == "submitted"


# --- partial fills over ticks --------------------------------------------------------------------

class TestLiquidity:
    @pytest.fixture
    def market_settings(self):
        return {"PAPER_LIQUIDITY_PER_TICK": "40"}

    def test_large_order_fills_partially_over_several_ticks(self, broker, db, set_price, match):
        set_price("AAPL", "100")
        order = place(broker, db, quantity="100")
        assert order.status == "partially_filled" and order.filled_quantity == Decimal("40")
        set_price("AAPL", "101")
        match()
        assert broker.get_order(order.broker_order_id).filled_quantity == Decimal("80")
        match()
        done = broker.get_order(order.broker_order_id)
        assert done.status == "filled" and [f.quantity for f in done.fills] == [Decimal(40), Decimal(40), Decimal(20)]
        assert sum(f.quantity for f in done.fills) == Decimal("100")
        assert done.average_fill_price == sum(f.quantity * f.price for f in done.fills) / 100
        assert broker.get_positions()[0].quantity == Decimal("100")
        assert match() == 0  # nothing left: never an overfill

    def test_cancel_keeps_the_partial_fill_and_stops_the_rest(self, broker, db, set_price, match):
        set_price("AAPL", "100")
        order = place(broker, db, quantity="100")
        cancelled = broker.cancel_order(order.broker_order_id)
        db.session.commit()
        assert cancelled.status == "cancelled" and cancelled.filled_quantity == Decimal("40")
        assert match() == 0


# --- fees and slippage ---------------------------------------------------------------------------

class TestCosts:
    @pytest.fixture
    def market_settings(self):
        return {"PAPER_SLIPPAGE_BPS": 10, "PAPER_FEE_PER_ORDER": "1.50", "PAPER_FEE_PER_UNIT": "0.01"}

    def test_slippage_moves_the_price_against_the_taker_and_fees_reduce_cash(self, broker, db, set_price):
        set_price("AAPL", "100")
        ask = quote("AAPL").ask
        order = place(broker, db, quantity="10")
        expected_price = (ask * Decimal("1.001")).quantize(Decimal("0.01"), rounding="ROUND_CEILING")
        assert order.fills[0].price == expected_price
        assert order.fills[0].fee == Decimal("1.50") + Decimal("0.10")
        assert broker.get_account().cash == Decimal("100000") - 10 * expected_price - Decimal("1.60")

    def test_sell_slippage_lowers_the_price(self, broker, db, set_price):
        set_price("AAPL", "100")
        place(broker, db, quantity="10")
        bid = quote("AAPL").bid
        sold = place(broker, db, side="sell", quantity="10")
        assert sold.fills[0].price == (bid * Decimal("0.999")).quantize(Decimal("0.01"), rounding="ROUND_FLOOR")


# --- cancel and replace --------------------------------------------------------------------------

def test_cancel_an_open_order_releases_its_buying_power(broker, db, set_price):
    set_price("AAPL", "100")
    order = place(broker, db, order_type="limit", limit_price="90", quantity="100")
    assert broker.get_account().buying_power == Decimal("100000") - 9000
    cancelled = broker.cancel_order(order.broker_order_id)
    db.session.commit()
    assert cancelled.status == "cancelled"
    assert broker.get_account().buying_power == Decimal("100000")
    assert broker.cancel_order(order.broker_order_id).status == "cancelled"  # idempotent


def test_cancel_a_filled_order_is_refused(broker, db, set_price):
    set_price("AAPL", "100")
    order = place(broker, db)
    with pytest.raises(OrderNotCancelable):
        broker.cancel_order(order.broker_order_id)


def test_unknown_order_id_is_not_found(broker):
    with pytest.raises(OrderNotFound):
        broker.get_order("no-such-order")


def test_another_accounts_order_is_not_found(make_broker, user, other_user, db, set_price):
    set_price("AAPL", "100")
    mine, theirs = make_broker(user), make_broker(other_user)
    order = place(theirs, db, order_type="limit", limit_price="90")
    with pytest.raises(OrderNotFound):
        mine.get_order(order.broker_order_id)
    with pytest.raises(OrderNotFound):
        mine.cancel_order(order.broker_order_id)
    assert mine.find_order_by_client_id(order.client_order_id) is None


def test_replace_makes_a_new_order_and_marks_the_old_replaced(broker, db, set_price, match):
    set_price("AAPL", "100")
    old = place(broker, db, order_type="limit", limit_price="90", quantity="10")
    new = broker.replace_order(old.broker_order_id, order_request(order_type="limit", limit_price="95",
                                                                  quantity="20", client_order_id="repl-1"))
    db.session.commit()
    assert new.broker_order_id != old.broker_order_id and new.client_order_id == "repl-1"
    replaced = broker.get_order(old.broker_order_id)
    assert replaced.status == "replaced" and replaced.replaced_by == new.broker_order_id
    assert broker.get_account().buying_power == Decimal("100000") - 20 * 95  # only the new order's hold
    set_price("AAPL", "94")
    match()
    assert broker.get_order(new.broker_order_id).status == "filled"
    assert broker.get_order(old.broker_order_id).filled_quantity == 0


def test_replace_is_idempotent_for_the_same_client_order_id(broker, db, set_price):
    set_price("AAPL", "100")
    old = place(broker, db, order_type="limit", limit_price="90")
    request = order_request(order_type="limit", limit_price="91", client_order_id="repl-2")
    first = broker.replace_order(old.broker_order_id, request)
    db.session.commit()
    assert broker.replace_order(old.broker_order_id, request).broker_order_id == first.broker_order_id


def test_replace_of_a_filled_order_is_refused(broker, db, set_price):
    set_price("AAPL", "100")
    filled = place(broker, db)
    with pytest.raises(OrderNotCancelable):
        broker.replace_order(filled.broker_order_id, order_request(order_type="limit", limit_price="91"))


def test_replace_that_would_exceed_buying_power_leaves_the_old_order_open(broker, db, set_price):
    set_price("AAPL", "100")
    old = place(broker, db, order_type="limit", limit_price="90", quantity="10")
    with pytest.raises(InsufficientFunds):
        broker.replace_order(old.broker_order_id, order_request(order_type="limit", limit_price="90",
                                                                quantity="5000"))
    db.session.commit()
    assert broker.get_order(old.broker_order_id).status == "submitted"


# --- idempotency ---------------------------------------------------------------------------------

def test_same_client_order_id_returns_the_existing_order(broker, db, set_price):
    from sqlalchemy import func, select

    from models import PaperOrder
    set_price("AAPL", "100")
    first = place(broker, db, client_order_id="same-1", quantity="10")
    again = place(broker, db, client_order_id="same-1", quantity="10")
    assert again.broker_order_id == first.broker_order_id
    assert db.session.scalar(select(func.count(PaperOrder.id))) == 1
    assert broker.get_positions()[0].quantity == Decimal("10")
    assert broker.find_order_by_client_id("same-1").broker_order_id == first.broker_order_id
    assert broker.find_order_by_client_id("never-sent") is None


# --- options and crypto --------------------------------------------------------------------------

def test_option_contracts_settle_with_a_multiplier_of_100(broker, db, set_price):
    set_price("AAPL301220P00190000", "3.10")
    order = place(broker, db, symbol="AAPL  301220P00190000", quantity="2", instruction="BUY_TO_OPEN")
    premium = order.fills[0].price
    assert order.symbol == "AAPL301220P00190000"
    assert broker.get_account().cash == Decimal("100000") - 2 * premium * 100
    set_price("AAPL301220P00190000", "4.10")
    [position] = broker.get_positions()
    assert position.asset_type == "option"
    assert Decimal(position.extra["unrealized_pl"]) == 2 * (Decimal("4.10") - premium) * 100
    sold = place(broker, db, symbol="AAPL301220P00190000", side="sell", quantity="2", instruction="SELL_TO_CLOSE")
    assert broker.get_account().cash == Decimal("100000") + 2 * (sold.fills[0].price - premium) * 100


def test_crypto_trades_in_fractions(broker, db, set_price):
    set_price("BTC-USD", "65000")
    order = place(broker, db, symbol="BTC-USD", quantity="0.0153")
    assert order.filled_quantity == Decimal("0.0153")
    assert broker.get_account().cash == Decimal("100000") - Decimal("0.0153") * order.fills[0].price
    place(broker, db, symbol="BTC-USD", side="sell", quantity="0.005")
    assert broker.get_positions()[0].quantity == Decimal("0.0103")


# --- rejections ----------------------------------------------------------------------------------

def test_buy_beyond_buying_power_is_rejected_and_stores_nothing(broker, db, set_price):
    set_price("AAPL", "100")
    with pytest.raises(InsufficientFunds) as raised:
        place(broker, db, quantity="1001")
    assert Decimal(raised.value.details["buying_power"]) == Decimal("100000")
    assert broker.find_order_by_client_id("cid-nope") is None
    assert broker.get_account().cash == Decimal("100000")


def test_open_buy_orders_hold_buying_power(broker, db, set_price):
    set_price("AAPL", "100")
    place(broker, db, order_type="limit", limit_price="90", quantity="1000")  # holds 90,000
    with pytest.raises(InsufficientFunds):
        place(broker, db, order_type="limit", limit_price="90", quantity="200")


@pytest.mark.parametrize("symbol", ["not a symbol", "TOOLONGSYMBOL", "AAPL 2405P"])
def test_malformed_symbol_is_rejected(broker, set_price, symbol):
    with pytest.raises(InvalidSymbol):
        broker.place_order(order_request(symbol="AAPL", asset_type="equity").__class__(
            **{**order_request().__dict__, "symbol": symbol, "asset_type": ""}))


def test_symbol_without_a_price_is_rejected(broker, set_price):
    with pytest.raises(InvalidSymbol):
        broker.place_order(order_request(symbol="ZZZZ"))


@pytest.mark.parametrize("quantity", ["0", "-5"])
def test_non_positive_quantity_is_rejected(broker, set_price, quantity):
    set_price("AAPL", "100")
    with pytest.raises(BrokerRejected) as raised:
        broker.place_order(order_request(quantity=quantity))
    assert raised.value.code == "broker_rejected"


def test_a_quantity_read_back_from_postgresql_with_trailing_zeros_is_the_same_quantity(broker, db, set_price):
    """PostgreSQL's NUMERIC(28, 10) hands every order quantity back as 1.0000000000: that is one unit,
    not a quantity with ten decimal places; only real digits beyond the ninth are refused."""
    set_price("BTC-USD", "65000")
    assert place(broker, db, symbol="BTC-USD", quantity="1.0000000000").status == "filled"
    assert place(broker, db, symbol="BTC-USD", quantity="0.0010000000").filled_quantity == Decimal("0.001")
    with pytest.raises(BrokerRejected):
        broker.place_order(order_request(symbol="BTC-USD", quantity="0.0000000001"))


def test_fractional_option_contracts_are_rejected(broker, set_price):
    set_price("AAPL301220P00190000", "3")
    with pytest.raises(BrokerRejected):
        broker.place_order(order_request(symbol="AAPL301220P00190000", quantity="1.5", instruction="BUY_TO_OPEN"))


def test_crypto_cannot_be_sold_short(broker, set_price):
    set_price("BTC-USD", "65000")
    with pytest.raises(BrokerRejected):
        broker.place_order(order_request(symbol="BTC-USD", side="sell", quantity="1"))


def test_limit_order_without_a_limit_price_is_rejected(broker, set_price):
    set_price("AAPL", "100")
    with pytest.raises(BrokerRejected):
        broker.place_order(order_request(order_type="limit"))


def test_instruction_must_match_the_side(broker, set_price):
    set_price("AAPL", "100")
    with pytest.raises(BrokerRejected):
        broker.place_order(order_request(side="buy", instruction="SELL_TO_CLOSE"))


def test_equity_short_sale_holds_buying_power_and_shows_a_negative_position(broker, db, set_price):
    set_price("AAPL", "100")
    sold = place(broker, db, side="sell", quantity="10", instruction="SELL_SHORT")
    assert sold.status == "filled"
    [position] = broker.get_positions()
    assert position.quantity == Decimal("-10")
    account = broker.get_account()
    assert account.cash == Decimal("100000") + 10 * sold.fills[0].price
    assert account.buying_power == account.cash - 2 * 10 * Decimal("100")
    assert account.equity == account.cash - 10 * Decimal("100")


# --- connection and factory ----------------------------------------------------------------------

def test_ensure_paper_connection_is_idempotent(app, db, user):
    from models import BrokerAccount, BrokerConnection, PaperAccount
    from utils.brokers import default_connection
    from utils.brokers.paper import ensure_paper_connection
    first = ensure_paper_connection(user)
    db.session.commit()
    assert default_connection(user).id == first.id
    db.session.commit()
    assert db.session.query(BrokerConnection).filter_by(user_id=user.id).count() == 1
    [account] = db.session.query(BrokerAccount).filter_by(connection_id=first.id).all()
    assert account.account_number.startswith("PAPER-") and account.account_number.endswith(account.last4)
    assert db.session.query(PaperAccount).filter_by(connection_id=first.id).one().cash == Decimal("100000")


class TestStartingCash:
    @pytest.fixture
    def market_settings(self):
        return {"PAPER_STARTING_CASH": "2500.50"}

    def test_starting_cash_is_configurable(self, broker):
        assert broker.get_account().cash == Decimal("2500.50")


def test_get_broker_builds_the_paper_adapter_and_refuses_unknown_brokers(app, db, user):
    from models import Broker, BrokerConnection
    from utils.brokers import BROKER_CLASSES, get_broker
    from utils.brokers.paper import PaperBroker, ensure_paper_connection
    from utils.errors import BrokerUnavailable
    assert isinstance(get_broker(ensure_paper_connection(user)), PaperBroker)
    saved = BROKER_CLASSES.pop("etrade", None)
    try:
        with pytest.raises(BrokerUnavailable):
            get_broker(BrokerConnection(user_id=user.id, broker=Broker.ETRADE))
        BROKER_CLASSES["etrade"] = "utils.brokers.not_written_yet:Nothing"
        with pytest.raises(BrokerUnavailable):
            get_broker(BrokerConnection(user_id=user.id, broker=Broker.ETRADE))
    finally:
        BROKER_CLASSES.pop("etrade", None)
        if saved is not None:
            BROKER_CLASSES["etrade"] = saved


def test_paper_state_survives_a_restart(app_config, broker, db, set_price, user):
    from main import create_app
    from utils.brokers import get_broker
    from utils.brokers.paper import ensure_paper_connection
    set_price("AAPL", "100")
    order = place(broker, db, order_type="limit", limit_price="90", quantity="3")
    with create_app(app_config).app_context():
        restarted = get_broker(ensure_paper_connection(db.session.merge(user)))
        assert restarted.get_order(order.broker_order_id).status == "submitted"
        db.session.remove()


def test_day_order_expires_after_midnight_utc_but_gtc_keeps_resting(broker, db, set_price, match):
    from datetime import timedelta

    from models import PaperOrder
    set_price("AAPL", "100")
    day = place(broker, db, order_type="limit", limit_price="90", time_in_force="day")
    gtc = place(broker, db, order_type="limit", limit_price="90", time_in_force="gtc")
    for order in db.session.query(PaperOrder):
        order.created_at = order.created_at - timedelta(days=1)
    db.session.commit()
    set_price("AAPL", "80")
    assert match() == 1
    assert broker.get_order(day.broker_order_id).status == "expired"
    assert broker.get_order(gtc.broker_order_id).status == "filled"


# --- stale prices ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [{}, {"order_type": "limit", "limit_price": "120"}], ids=["market", "limit"])
def test_an_order_on_a_stale_price_is_refused_and_nothing_is_placed(app, broker, db, set_price, fields):
    from sqlalchemy import func, select

    from models import PaperOrder
    set_price("AAPL", "100")
    age_the_price(app, db, "AAPL")
    with pytest.raises(BrokerRejected) as refused:
        place(broker, db, quantity="10", **fields)
    assert refused.value.code == "stale_quote" and "AAPL" in refused.value.message
    assert refused.value.details["max_age_seconds"] == app.config["QUOTE_MAX_AGE_SECONDS"]
    db.session.rollback()
    assert db.session.scalar(select(func.count(PaperOrder.id))) == 0
    assert broker.get_account().cash == Decimal("100000")
    set_price("AAPL", "100")  # a fresh price: the same order goes through
    assert place(broker, db, quantity="10", **fields).status == "filled"


def test_a_replace_on_a_stale_price_is_refused_and_the_old_order_stays(app, broker, db, set_price):
    set_price("AAPL", "100")
    old = place(broker, db, order_type="limit", limit_price="90")
    age_the_price(app, db, "AAPL")
    with pytest.raises(BrokerRejected) as refused:
        broker.replace_order(old.broker_order_id, order_request(order_type="limit", limit_price="120"))
    assert refused.value.code == "stale_quote"
    db.session.rollback()
    assert broker.get_order(old.broker_order_id).status == "submitted"


def test_a_resend_of_an_accepted_order_is_answered_even_when_the_price_went_stale(app, broker, db, set_price):
    set_price("AAPL", "100")
    first = place(broker, db, client_order_id="before-stale", quantity="10")
    age_the_price(app, db, "AAPL")
    again = place(broker, db, client_order_id="before-stale", quantity="10")
    assert (again.broker_order_id, again.status) == (first.broker_order_id, "filled")


# --- closing orders never pass zero ------------------------------------------------------------------

def test_a_stop_for_more_than_is_still_held_sells_what_is_held_and_the_rest_is_cancelled(broker, db, set_price,
                                                                                         match):
    """The window a broker-side stop for the whole position leaves after part of it was sold: the stop
    triggers before it is resized. It must close the position, not open a short of the difference."""
    set_price("AAPL", "100")
    place(broker, db, quantity="10")
    stop = place(broker, db, side="sell", quantity="10", order_type="stop", stop_price="95")
    place(broker, db, side="sell", quantity="4")  # the partial exit
    set_price("AAPL", "94")
    match()
    stopped = broker.get_order(stop.broker_order_id)
    assert (stopped.status, stopped.filled_quantity) == ("cancelled", Decimal("6"))
    assert stopped.reject_reason == "Cancelled: the position it closes is already closed."
    assert broker.get_positions() == []


def test_a_closing_order_with_nothing_held_is_refused(broker, db, set_price):
    set_price("AAPL", "100")
    for side, instruction in (("sell", "SELL"), ("buy", "BUY_TO_COVER")):
        with pytest.raises(BrokerRejected, match="Nothing to close"):
            place(broker, db, side=side, quantity="5", instruction=instruction)
        db.session.rollback()
    assert broker.get_positions() == []
    assert broker.get_account().cash == Decimal("100000")


def test_a_partial_exit_beside_a_stop_for_the_whole_position_needs_no_buying_power(make_broker, make_user, db,
                                                                                    set_price):
    """Fully invested, with a resting stop for the whole position: selling part of it still goes through
    (a closing sell never goes short, so it holds nothing against buying power)."""
    from models import PaperAccount
    broker = make_broker(make_user(email="all-in@example.com"))
    set_price("AAPL", "100")
    place(broker, db, quantity="990")
    db.session.query(PaperAccount).update({"cash": Decimal("50")})
    db.session.commit()
    place(broker, db, side="sell", quantity="990", order_type="stop", stop_price="95")
    sold = place(broker, db, side="sell", quantity="400")
    assert (sold.status, sold.filled_quantity) == ("filled", Decimal("400"))
    assert broker.get_positions()[0].quantity == Decimal("590")


def test_covering_a_short_stops_at_zero_and_opening_instructions_still_go_past_it(broker, db, set_price):
    set_price("AAPL", "100")
    place(broker, db, side="sell", quantity="10", instruction="SELL_SHORT")
    cover = place(broker, db, side="buy", quantity="15", instruction="BUY_TO_COVER")
    assert (cover.status, cover.filled_quantity) == ("cancelled", Decimal("10"))
    assert broker.get_positions() == []
    place(broker, db, side="buy", quantity="3", instruction="BUY")
    place(broker, db, side="sell", quantity="5", instruction="SELL_SHORT")  # an opening sell may go short
    [position] = broker.get_positions()
    assert position.quantity == Decimal("-2")
