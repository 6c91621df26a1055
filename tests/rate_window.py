"""The API's rate limits count hits in clock-aligned windows (utils.api_auth.hit_limit: a minute from :00), so
a test that counts its requests up to a 429 must send them within one window: across the edge the count
starts again and the 429 never comes."""
from __future__ import annotations

import time


def clear_of_a_window_edge(period: int = 60, margin: float = 10) -> None:
    """Wait, if need be, until the current window has at least `margin` seconds left."""
    left = period - time.time() % period
    if left < margin:
        time.sleep(left + 0.05)
