"""Quotes from brokers are used for decisions (stop-loss exits) only when complete and dated."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from utils.brokers import coinbase, schwab
from utils.market_data import broker_quote

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
MILLIS = int(NOW.timestamp() * 1000)


def test_a_complete_dated_quote_is_kept_exactly():
    quote = broker_quote("AAPL", "189.99", 190.01, "190", NOW)
    assert (quote.bid, quote.ask, quote.last, quote.as_of) == (Decimal("189.99"), Decimal("190.01"), Decimal("190"), NOW)
    assert broker_quote("AAPL", "1", "3", None, NOW).last == Decimal("2")  # no last: the midpoint


@pytest.mark.parametrize("bid, ask, as_of", [(None, "190", NOW), ("190", None, NOW), ("0", "190", NOW),
                                             ("190", "-1", NOW), ("189", "190", None)])
def test_a_missing_or_non_positive_price_or_a_missing_time_is_no_quote(bid, ask, as_of):
    assert broker_quote("AAPL", bid, ask, "190", as_of) is None


def test_schwab_quotes_without_a_bid_or_a_time_are_dropped_not_zero_or_now():
    complete = {"quote": {"bidPrice": 189.5, "askPrice": 189.6, "lastPrice": 189.55, "quoteTime": MILLIS}}
    assert schwab._to_quote("AAPL", complete).bid == Decimal("189.5")
    assert schwab._to_quote("AAPL", {"quote": {"askPrice": 189.6, "lastPrice": 189.55, "quoteTime": MILLIS}}) is None
    assert schwab._to_quote("AAPL", {"quote": {"bidPrice": 189.5, "askPrice": 189.6, "lastPrice": 189.55}}) is None


def test_coinbase_books_without_their_time_are_dropped():
    book = {"product_id": "BTC-USD", "bids": [{"price": "100", "size": "1"}], "asks": [{"price": "102", "size": "1"}]}
    assert coinbase._to_quote(book) is None
    assert coinbase._to_quote({**book, "time": "2026-11-23T12:00:00Z"}).last == Decimal("101")
