"""Market data: sources `simulated` (seeded random walk), `manual` and `schwab`; one cached batch call.

`Quote` lives here, the lower layer, so brokers import it without running back up (DESIGN §3).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True)
class Quote:
    """A price snapshot. `as_of` is the quote's own time (UTC), so callers can tell it is stale."""

    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    as_of: datetime
