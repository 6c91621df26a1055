"""Place, cancel, replace and fills through the Schwab and Coinbase adapters against their fakes."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from sqlalchemy import select

from models import BrokerConnection
from utils.brokers import get_broker
from utils.brokers.base import OrderRequest
from utils.errors import (BrokerRejected, BrokerUnavailable, InsufficientFunds, InvalidSymbol, OrderNotCancelable)


def _request(symbol, order_type="market", quantity="10", limit=None, stop=None, tif="day", asset="equity",
             side="buy"):
    return OrderRequest(client_order_id=uuid.uuid4().hex, symbol=symbol, asset_type=asset, side=side,
                        instruction=side.upper(), order_type=order_type, quantity=Decimal(quantity),
                        time_in_force=tif, limit_price=Decimal(limit) if limit else None,
                        stop_price=Decimal(stop) if stop else None)


@pytest.fixture
def schwab(link, db):
    link("schwab")
    return get_broker(db.session.scalar(select(BrokerConnection)))


@pytest.fixture
def coinbase(link, db):
    link("coinbase")
    return get_broker(db.session.scalar(select(BrokerConnection)))


def test_schwab_market_order_fills_from_order_activity(schwab):
    order = schwab.place_order(_request("AAPL", quantity="10"))
    assert order.status == "filled" and order.filled_quantity == Decimal("10")
    assert len(order.fills) == 2 and sum(f.quantity for f in order.fills) == Decimal("10")
    assert order.average_fill_price == Decimal("190.00") and order.broker_order_id.isdigit()


def test_schwab_instant_fill_without_location_is_found(schwab):
    order = schwab.place_order(_request("SPY", quantity="3"))
    assert order.status == "filled" and order.symbol == "SPY"


def test_schwab_limit_order_cancel_and_replace(schwab):
    order = schwab.place_order(_request("MSFT", "limit", "5", limit="400.50"))
    assert order.status == "submitted"
    new = schwab.replace_order(order.broker_order_id, _request("MSFT", "limit", "5", limit="401.00"))
    assert new.broker_order_id != order.broker_order_id
    old = schwab.get_order(order.broker_order_id)
    assert old.status == "replaced" and old.replaced_by == new.broker_order_id
    assert schwab.cancel_order(new.broker_order_id).status == "cancelled"
    with pytest.raises(OrderNotCancelable):
        schwab.cancel_order(new.broker_order_id)


def test_schwab_business_errors_map_to_domain_errors_without_retry(schwab, fakes):
    with pytest.raises(InvalidSymbol):
        schwab.place_order(_request("ZZZZ"))
    with pytest.raises(InsufficientFunds):
        schwab.place_order(_request("AAPL", quantity="100000"))
    assert fakes["schwab"].stats()["api_calls"].get("POST /trader/v1/accounts/<account_hash>/orders") == 2


def test_schwab_quotes_are_batched_and_skip_invalid_symbols(schwab, fakes):
    quotes = schwab.get_quotes(["AAPL", "MSFT", "ZZZZ"])
    assert set(quotes) == {"AAPL", "MSFT"} and quotes["AAPL"].last == Decimal("190.0")
    assert fakes["schwab"].stats()["api_calls"]["GET /marketdata/v1/quotes"] == 1


def test_schwab_retries_429_and_5xx_for_reads_then_succeeds(schwab, fakes):
    fakes["schwab"].control(fail_next=[429, 503])
    assert schwab.get_account().buying_power == Decimal("50000")


def test_schwab_positions_carry_our_symbols_and_asset_types(schwab):
    positions = {position.symbol: position for position in schwab.get_positions()}
    assert set(positions) == {"AAPL", "AAPL240517P00190000"}  # the option's padded OCC symbol, unpadded
    assert (positions["AAPL"].asset_type, positions["AAPL"].quantity) == ("equity", Decimal("10"))
    option = positions["AAPL240517P00190000"]
    assert (option.asset_type, option.quantity, option.average_price) == ("option", Decimal("2"), Decimal("3.15"))


def test_schwab_gives_up_after_bounded_retries(schwab, fakes):
    fakes["schwab"].control(fail_next=[503, 503, 503, 503])
    with pytest.raises(BrokerUnavailable):
        schwab.get_positions()


def test_schwab_does_not_retry_an_order_post_on_5xx(schwab, fakes):
    fakes["schwab"].control(fail_next=[503])
    with pytest.raises(BrokerUnavailable):
        schwab.place_order(_request("AAPL"))
    assert fakes["schwab"].stats()["api_calls"].get("POST /trader/v1/accounts/<account_hash>/orders") == 1


def test_coinbase_market_order_fills_with_fees(coinbase):
    order = coinbase.place_order(_request("BTC-USD", quantity="0.01", asset="crypto"))
    assert order.status == "filled" and order.filled_quantity == Decimal("0.01")
    assert order.fills[0].price == Decimal("60000.00") and order.fills[0].fee == Decimal("3.60")


def test_coinbase_repeated_client_order_id_does_not_double(coinbase, fakes):
    request = _request("ETH-USD", "limit", "1", limit="2900", tif="gtc", asset="crypto")
    first, second = coinbase.place_order(request), coinbase.place_order(request)
    assert first.broker_order_id == second.broker_order_id
    assert coinbase.find_order_by_client_id(request.client_order_id).broker_order_id == first.broker_order_id
    assert coinbase.find_order_by_client_id("never-sent") is None


def test_coinbase_edit_cancel_and_rejections(coinbase):
    order = coinbase.place_order(_request("ETH-USD", "limit", "1", limit="2900", tif="gtc", asset="crypto"))
    edited = coinbase.replace_order(order.broker_order_id,
                                    _request("ETH-USD", "limit", "2", limit="2950", tif="gtc", asset="crypto"))
    assert edited.quantity == Decimal("2")
    assert coinbase.cancel_order(order.broker_order_id).status == "cancelled"
    with pytest.raises(OrderNotCancelable):
        coinbase.cancel_order(order.broker_order_id)
    with pytest.raises(InsufficientFunds):  # HTTP 200 with success:false
        coinbase.place_order(_request("BTC-USD", quantity="5", asset="crypto"))


@pytest.mark.parametrize("request_", [_request("BTC-USD", "stop", "1", stop="50000", asset="crypto", side="sell"),
                                      _request("BTC-USD", "limit", "1", limit="1", asset="option")])
def test_coinbase_refuses_stop_market_and_options_with_422(coinbase, fakes, request_):
    with pytest.raises(BrokerRejected) as caught:
        coinbase.place_order(request_)
    assert caught.value.status == 422 and "Coinbase" in caught.value.message
    assert "POST /orders" not in fakes["coinbase"].stats()["api_calls"]


def test_coinbase_quotes(coinbase):
    quotes = coinbase.get_quotes(["BTC-USD", "ETH-USD", "NOPE-USD"])
    assert set(quotes) == {"BTC-USD", "ETH-USD"} and quotes["BTC-USD"].bid == Decimal("59999.00")


def test_schwab_option_orders_use_the_padded_occ_symbol_and_come_back_canonical(schwab):
    from utils.brokers.schwab import _to_order
    request = _request("AAPL240517P00190000", "limit", "1", limit="2.50", asset="option")
    leg = schwab.order_body(request)["orderLegCollection"][0]
    assert leg["instrument"] == {"symbol": "AAPL  240517P00190000", "assetType": "OPTION"}
    answer = {"orderId": 7, "status": "WORKING", "quantity": 1, "filledQuantity": 0,
              "orderLegCollection": [{"instruction": "BUY_TO_OPEN", "quantity": 1, "instrument": leg["instrument"]}]}
    assert _to_order(answer, None).symbol == "AAPL240517P00190000"
