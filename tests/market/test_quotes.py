"""Market data: one batched, cached read; seeded reproducible walk; manual prices that persist; staleness."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import redis as redis_lib

from tests.conftest import base_config


def source_reads(app) -> tuple[int, int]:
    """(batched source reads, symbols read) as counted in the cache Redis by utils.market_data."""
    from utils import market_data
    client = redis_lib.Redis.from_url(app.config["CACHE_REDIS_URL"])
    return (int(client.get(market_data.READS_KEY) or 0), int(client.get(market_data.READ_SYMBOLS_KEY) or 0))


def test_quotes_for_many_symbols_come_from_one_source_read_then_from_the_cache(app, set_price):
    from utils import market_data
    set_price("AAPL", "190.25")
    set_price("MSFT", "420")
    before = source_reads(app)
    first = market_data.get_quotes(["AAPL", "MSFT", "NOPE"])
    assert source_reads(app) == (before[0] + 1, before[1] + 3)
    second = market_data.get_quotes(["MSFT", "AAPL"])
    assert source_reads(app) == (before[0] + 1, before[1] + 3)  # all from the cache
    assert set(first) == {"AAPL", "MSFT"} and second["AAPL"] == first["AAPL"]
    cached_keys = redis_lib.Redis.from_url(app.config["CACHE_REDIS_URL"]).keys("quote:manual:*")
    assert sorted(cached_keys) == [b"quote:manual:AAPL", b"quote:manual:MSFT"]


def test_cache_lives_in_redis_db_1_with_the_configured_ttl(app, set_price):
    from utils import market_data
    set_price("AAPL", "100")
    market_data.get_quotes(["AAPL"])
    cache = redis_lib.Redis.from_url(app.config["CACHE_REDIS_URL"])
    assert app.config["CACHE_REDIS_URL"].endswith("/1")
    assert 0 < cache.ttl("quote:manual:AAPL") <= app.config["QUOTE_CACHE_TTL_SECONDS"]


def test_only_the_misses_are_read_from_the_source(app, set_price):
    from utils import market_data
    set_price("AAPL", "100")
    set_price("MSFT", "200")
    market_data.get_quotes(["AAPL"])
    before = source_reads(app)
    quotes = market_data.get_quotes(["AAPL", "MSFT"])
    assert source_reads(app) == (before[0] + 1, before[1] + 1)
    assert quotes["MSFT"].last == Decimal("200")


def test_quote_has_decimal_bid_below_last_below_ask(app, set_price):
    from utils import market_data
    set_price("AAPL", "190.25")
    quote = market_data.get_quotes(["AAPL"])["AAPL"]
    assert all(isinstance(value, Decimal) for value in (quote.bid, quote.ask, quote.last))
    assert quote.bid < quote.last == Decimal("190.25") < quote.ask
    assert quote.ask - quote.bid < Decimal("0.5")


def test_new_manual_price_is_visible_at_once_despite_the_cache(app, set_price):
    from utils import market_data
    set_price("AAPL", "100")
    assert market_data.get_quotes(["AAPL"])["AAPL"].last == Decimal("100")
    set_price("AAPL", "101.5")
    assert market_data.get_quotes(["AAPL"])["AAPL"].last == Decimal("101.5")


def test_manual_price_survives_a_restart_with_its_set_time(app, app_config, set_price, redis_server):
    from main import create_app
    from utils import market_data
    set_price("TSLA", "180.5")
    set_at = market_data.get_quotes(["TSLA"])["TSLA"].as_of
    redis_server.flush()  # the cache is gone too: the database is the source of truth
    restarted = create_app(app_config)
    with restarted.app_context():
        quote = market_data.get_quotes(["TSLA"])["TSLA"]
    assert quote.last == Decimal("180.5") and quote.as_of == set_at


def test_unknown_and_malformed_symbols_are_simply_absent(app, set_price):
    from utils import market_data
    set_price("AAPL", "100")
    assert set(market_data.get_quotes(["AAPL", "ZZZZ", "not a symbol!", ""])) == {"AAPL"}


def test_quotes_are_keyed_by_the_symbol_as_requested(app, set_price):
    from utils import market_data
    set_price("AAPL301220P00190000", "3.10")
    quotes = market_data.get_quotes(["AAPL  301220P00190000", "AAPL301220P00190000"])
    assert quotes["AAPL  301220P00190000"].last == quotes["AAPL301220P00190000"].last == Decimal("3.10")


def test_is_stale_compares_the_quote_time_with_a_max_age(app):
    from utils import market_data
    now = datetime.now(timezone.utc)
    quote = market_data.Quote("AAPL", Decimal("1"), Decimal("1.1"), Decimal("1.05"), now - timedelta(seconds=90))
    assert market_data.is_stale(quote, timedelta(seconds=60), now=now)
    assert not market_data.is_stale(quote, timedelta(seconds=120), now=now)
    assert not market_data.is_stale(quote, now=now)  # default max age: QUOTE_MAX_AGE_SECONDS = 300
    assert market_data.is_stale(quote, now=now + timedelta(seconds=300))


@pytest.mark.parametrize("symbol, asset_type", [("AAPL", "equity"), ("BRK.B", "equity"), ("BTC-USD", "crypto"),
                                                ("AAPL  240517P00190000", "option"), ("SPY240426C00555000", "option")])
def test_symbols_are_classified_by_pattern(symbol, asset_type):
    from utils import market_data
    assert market_data.asset_type_of(symbol) == asset_type


def test_option_symbols_have_a_compact_and_a_padded_form():
    from utils import market_data
    assert market_data.canonical_symbol("aapl  240517p00190000") == "AAPL240517P00190000"
    assert market_data.occ_padded("AAPL240517P00190000") == "AAPL  240517P00190000"


def test_an_option_expires_after_its_date_in_new_york():
    from datetime import date, datetime, timezone

    from utils import market_data
    symbol = "SPY261204C00600000"  # expires 2026-12-04
    late_on_the_day = datetime(2026, 12, 5, 3, 0, tzinfo=timezone.utc)  # 22:00 on Dec 4 in New York
    next_day = datetime(2026, 12, 5, 6, 0, tzinfo=timezone.utc)  # 01:00 on Dec 5 in New York
    assert market_data.expired_on(symbol, now=late_on_the_day) is None
    assert market_data.expired_on(symbol, now=next_day) == date(2026, 12, 4)
    assert market_data.expired_on("AAPL", now=next_day) is None


# --- the simulated source ------------------------------------------------------------------------

def simulated_app(redis_server, database_url, seed: int):
    from main import create_app
    return create_app(base_config(redis_server.url, database_url, MARKET_DATA_SOURCE="simulated",
                                  SIMULATED_SEED=seed, SIMULATED_SYMBOLS="AAPL=100,BTC-USD=50000"))


def walk(application, ticks: int) -> list[tuple[Decimal, Decimal]]:
    from utils import market_data
    from utils.extensions import db
    path = []
    with application.app_context():
        for _ in range(ticks):
            market_data.advance_simulated_prices()
            db.session.commit()
            quotes = market_data.get_quotes(["AAPL", "BTC-USD"], fresh=True)
            path.append((quotes["AAPL"].last, quotes["BTC-USD"].last))
        db.session.remove()
    return path


def copy_database(template_database, tmp_path, name: str) -> str:
    from tests.conftest import copy_of
    return copy_of(template_database, tmp_path / name)


def test_simulated_walk_is_reproducible_for_a_seed(redis_server, template_database, tmp_path):
    redis_server.flush()
    first = walk(simulated_app(redis_server, copy_database(template_database, tmp_path, "a.db"), 7), 12)
    redis_server.flush()
    again = walk(simulated_app(redis_server, copy_database(template_database, tmp_path, "b.db"), 7), 12)
    redis_server.flush()
    other = walk(simulated_app(redis_server, copy_database(template_database, tmp_path, "c.db"), 8), 12)
    assert first == again
    assert first != other
    assert len({aapl for aapl, _ in first}) > 3  # it actually moves


def test_simulated_walk_continues_after_a_restart(redis_server, template_database, tmp_path):
    redis_server.flush()
    straight = walk(simulated_app(redis_server, copy_database(template_database, tmp_path, "a.db"), 3), 8)
    redis_server.flush()
    database = copy_database(template_database, tmp_path, "b.db")
    part = walk(simulated_app(redis_server, database, 3), 5)
    rest = walk(simulated_app(redis_server, database, 3), 3)  # a new process on the same database
    assert part + rest == straight


def test_simulated_quotes_any_valid_symbol_from_a_start_price_derived_from_its_name(redis_server, database_url):
    from utils import market_data
    redis_server.flush()
    application = simulated_app(redis_server, database_url, 1)
    with application.app_context():
        quotes = market_data.get_quotes(["XYZ", "AAPL", "ETH-USD"])
        assert quotes["AAPL"].last == Decimal("100")
        assert quotes["XYZ"].last == market_data.start_price("XYZ")
        assert Decimal("10") <= quotes["XYZ"].last < Decimal("500")
        assert "ETH-USD" in quotes
        watched = redis_lib.Redis.from_url(application.config["CACHE_REDIS_URL"]).smembers(market_data.WATCHED_KEY)
        assert b"XYZ" in watched  # the next tick walks it too
        market_data.advance_simulated_prices()
        from utils.extensions import db
        db.session.commit()
        from models import MarketPrice
        assert db.session.query(MarketPrice).filter_by(source="simulated", symbol="XYZ").count() == 1
        db.session.remove()


class TestCacheDown:
    @pytest.fixture
    def app_config(self, redis_server, database_url):
        from tests.conftest import free_port
        return base_config(redis_server.url, database_url, CACHE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/1")

    def test_quotes_still_come_from_the_source_when_the_cache_is_down(self, app, set_price):
        from utils import market_data
        set_price("AAPL", "123.45")
        assert market_data.get_quotes(["AAPL"])["AAPL"].last == Decimal("123.45")


def test_sources_plug_in_through_the_registry_and_a_missing_one_is_503(app):
    from utils import market_data
    from utils.errors import DependencyUnavailable

    class FixedSource:
        def fetch(self, symbols):
            return {s: market_data.quote_from_last(s, Decimal("7"), datetime.now(timezone.utc)) for s in symbols}

    app.config["MARKET_DATA_SOURCE"] = "fixed-for-test"
    with pytest.raises(DependencyUnavailable):
        market_data.get_quotes(["AAPL"])
    market_data.register_source("fixed-for-test", FixedSource())
    try:
        assert market_data.get_quotes(["AAPL"])["AAPL"].last == Decimal("7")
    finally:
        market_data.SOURCES.pop("fixed-for-test")


def test_within_quotes_held_each_symbol_is_read_once(app, set_price):
    """A paper execution reads its price before it takes the database's write lock; the broker's own read
    inside gets that quote, without asking Redis again, even if the cached quote changed meanwhile."""
    from utils import market_data
    set_price("AAPL", "100")
    set_price("MSFT", "200")
    cache = redis_lib.Redis.from_url(app.config["CACHE_REDIS_URL"])
    with market_data.quotes_held():
        first = market_data.get_quotes(["AAPL"])["AAPL"]
        cache.delete("quote:manual:AAPL", "quote:manual:MSFT")
        set_price("AAPL", "101")
        again = market_data.get_quotes(["AAPL", "MSFT"])
        assert again["AAPL"] == first and again["AAPL"].last == Decimal("100")
        assert again["MSFT"].last == Decimal("200")  # not held yet: read, and held from now on
        assert market_data.get_quotes(["AAPL"], fresh=True)["AAPL"].last == Decimal("101")  # fresh skips it
    assert market_data.get_quotes(["AAPL"])["AAPL"].last == Decimal("101")  # outside, reads as before
