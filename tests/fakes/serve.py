"""Run the three fake brokers for a local demo: `python -m tests.fakes.serve` (or `make run FAKE_BROKERS=1`).

Ports: FAKE_SCHWAB_PORT (8701), FAKE_COINBASE_PORT (8702), FAKE_ETRADE_PORT (8703). The callback URLs the
fakes accept are built from PUBLIC_BASE_URL (default http://127.0.0.1:5000), exactly as the app builds them.
The environment variables that point Tradewarden at the fakes are printed on start.
"""
from __future__ import annotations

import logging
import os
import threading

from tests.fakes import coinbase, etrade, schwab
from tests.fakes.runner import ThreadedServer

log = logging.getLogger("tradewarden.fakes")


def settings(base: str, ports: dict[str, int]) -> dict[str, str]:
    """The Tradewarden variables that point at the running fakes."""
    s, c, e = (f"http://127.0.0.1:{ports[name]}" for name in ("schwab", "coinbase", "etrade"))
    return {
        "PUBLIC_BASE_URL": base,
        "SCHWAB_CLIENT_ID": schwab.CLIENT_ID, "SCHWAB_CLIENT_SECRET": schwab.CLIENT_SECRET,
        "SCHWAB_AUTHORIZE_URL": f"{s}/v1/oauth/authorize", "SCHWAB_TOKEN_URL": f"{s}/v1/oauth/token",
        "SCHWAB_API_BASE_URL": s,
        "COINBASE_CLIENT_ID": coinbase.CLIENT_ID, "COINBASE_CLIENT_SECRET": coinbase.CLIENT_SECRET,
        "COINBASE_AUTHORIZE_URL": f"{c}/oauth2/auth", "COINBASE_TOKEN_URL": f"{c}/oauth2/token",
        "COINBASE_API_BASE_URL": f"{c}/api/v3/brokerage",
        "ETRADE_CONSUMER_KEY": etrade.CONSUMER_KEY, "ETRADE_CONSUMER_SECRET": etrade.CONSUMER_SECRET,
        "ETRADE_API_BASE_URL": e, "ETRADE_AUTHORIZE_URL": f"{e}/e/t/etws/authorize",
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    base = os.environ.get("PUBLIC_BASE_URL", "http://127.0.0.1:5000").rstrip("/")
    ports = {"schwab": int(os.environ.get("FAKE_SCHWAB_PORT", 8701)),
             "coinbase": int(os.environ.get("FAKE_COINBASE_PORT", 8702)),
             "etrade": int(os.environ.get("FAKE_ETRADE_PORT", 8703))}
    ThreadedServer(schwab.create_app([f"{base}/brokers/schwab/callback"]), ports["schwab"]).start()
    ThreadedServer(coinbase.create_app([f"{base}/brokers/coinbase/callback"]), ports["coinbase"]).start()
    ThreadedServer(etrade.create_app(), ports["etrade"]).start()
    lines = "\n".join(f"{key}={value}" for key, value in settings(base, ports).items())
    log.info("fake brokers are up; put these in .env (then restart) to link against them:\n%s", lines)
    threading.Event().wait()


if __name__ == "__main__":
    main()
