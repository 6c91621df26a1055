"""The sweep's pure evaluation: breaches by side, take-profit, stale quotes, and trailing stops."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from utils.market_data import Quote
from utils.stoploss import evaluate, trailed, usable_quotes

NOW = datetime(2026, 1, 5, 15, 0, tzinfo=timezone.utc)
D = Decimal


def row(trade_id, side="long", stop=None, trail=None, mark=None, target=None, misses=0, symbol="AAPL"):
    return (trade_id, 1, symbol, side == "long", stop, trail, mark, target, misses)


def prices(**by_symbol):
    quotes = {symbol: Quote(symbol, D(bid), D(ask), D(last), NOW) for symbol, (bid, ask, last) in by_symbol.items()}
    return usable_quotes(quotes, NOW, timedelta(seconds=300))


def test_a_long_breaches_when_the_bid_reaches_the_stop_and_a_short_when_the_ask_does():
    plan = evaluate([row(1, stop="95"), row(2, stop="94.99"), row(3, "short", stop="95.02"),
                     row(4, "short", stop="95.03")], prices(AAPL=("95", "95.02", "95.01")))
    assert plan.breaches == [(1, 1, "stop_loss"), (3, 1, "stop_loss")]
    assert plan.checked == 4 and plan.misses == []


def test_take_profit_is_symmetric():
    plan = evaluate([row(1, target="110"), row(2, "short", target="90"), row(3, target="111")],
                    prices(AAPL=("110", "110.05", "110.02")))
    assert plan.breaches == [(1, 1, "take_profit")]
    plan = evaluate([row(2, "short", target="90")], prices(AAPL=("89.9", "90", "89.95")))
    assert plan.breaches == [(2, 1, "take_profit")]


def test_a_stale_or_missing_quote_never_breaches_and_counts_a_miss():
    stale = {"AAPL": Quote("AAPL", D("1"), D("1"), D("1"), NOW - timedelta(seconds=301))}
    plan = evaluate([row(1, stop="95", misses=2), row(2, stop="95", symbol="MSFT")],
                    usable_quotes(stale, NOW, timedelta(seconds=300)))
    assert plan.breaches == []
    assert plan.misses == [(1, 1, "AAPL", 3), (2, 1, "MSFT", 1)]


def test_a_good_quote_resets_the_miss_streak():
    plan = evaluate([row(1, stop="95", misses=2), row(2, stop="95")], prices(AAPL=("100", "100.1", "100")))
    assert plan.recovered == [1]


def test_a_trailing_stop_ratchets_up_and_never_down():
    assert trailed(D("90"), D("10"), D("100"), D("120"), True) == (D("120"), D("108.00"))
    assert trailed(D("108"), D("10"), D("120"), D("110"), True) == (D("120"), D("108"))
    assert trailed(D("110"), D("10"), D("100"), D("80"), False) == (D("80"), D("88.00"))
    assert trailed(D("88"), D("10"), D("80"), D("85"), False) == (D("80"), D("88"))


def test_a_trailing_stop_moves_before_the_breach_check():
    plan = evaluate([row(1, stop="90", trail="10", mark="100")], prices(AAPL=("107.9", "108", "120")))
    assert plan.ratchets == [(1, D("90"), D("108.00"), D("100"), D("120"))]
    assert plan.breaches == [(1, 1, "stop_loss")]
