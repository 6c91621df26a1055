"""HTTP to a broker: timeouts on every call, bounded retries with backoff on 429/5xx honouring
Retry-After, and no retry of business errors (4xx). Unreachable after retries → BrokerUnavailable."""
from __future__ import annotations

import logging
import time
from typing import Callable

import requests
from urllib3.exceptions import NewConnectionError

from utils.errors import BrokerAuthExpired, BrokerUnavailable

log = logging.getLogger("tradewarden.brokers.http")

TIMEOUT = (5, 15)             # connect, read (seconds)
MAX_ATTEMPTS = 3
BASE_BACKOFF_SECONDS = 0.25
MAX_RETRY_AFTER_SECONDS = 5.0  # a broker asking for longer is treated as unavailable for now
RETRYABLE = {429, 500, 502, 503, 504}


class BrokerHttp:
    """A small client for one broker API; `auth_headers()` is asked before every attempt (fresh token)."""

    def __init__(self, base_url: str, auth_headers: Callable[[], dict], broker_name: str,
                 session: requests.Session | None = None, auth: Callable | None = None,
                 is_throttled: Callable[[requests.Response], bool] | None = None):
        self.base_url = base_url.rstrip("/")
        self.auth_headers, self.auth = auth_headers, auth
        self.broker_name = broker_name
        self.session = session or requests.Session()
        self.is_throttled = is_throttled or (lambda response: False)  # e.g. E*TRADE's 400 + HTML page

    def request(self, method: str, path: str, *, retry_unsafe: bool = False, changes_nothing: bool = False,
                **kwargs) -> requests.Response:
        """Send one request; retries 429 always, 5xx/network errors only for safe or idempotent calls.
        `changes_nothing` marks a POST that only asks (E*TRADE's order preview): it is retried like a read,
        and its failure never counts as an order that may have reached the broker."""
        safe = method in ("GET", "HEAD") or retry_unsafe or changes_nothing
        changes = method not in ("GET", "HEAD") and not changes_nothing
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = self.session.request(method, self.base_url + path, timeout=TIMEOUT,
                                                headers={**self.auth_headers(), **kwargs.get("headers", {})},
                                                auth=self.auth() if self.auth else None,
                                                **{k: v for k, v in kwargs.items() if k != "headers"})
            except (requests.ConnectionError, requests.Timeout) as error:
                if not safe or attempt == MAX_ATTEMPTS:
                    raise _unavailable(f"{self.broker_name} could not be reached.", changes,
                                       _may_have_arrived(error)) from error
                _sleep(attempt, None)
                continue
            if response.status_code == 401:
                raise BrokerAuthExpired(f"{self.broker_name} rejected the access token; link the account again.")
            throttled = response.status_code == 429 or self.is_throttled(response)
            if response.status_code not in RETRYABLE and not throttled:
                return response
            if (not throttled and not safe) or attempt == MAX_ATTEMPTS \
                    or _retry_after(response) > MAX_RETRY_AFTER_SECONDS:
                raise _unavailable(f"{self.broker_name} is unavailable (HTTP {response.status_code}).", changes,
                                   not throttled, details={"status": response.status_code})
            log.info("%s answered %s; retrying (attempt %s)", self.broker_name, response.status_code, attempt)
            _sleep(attempt, _retry_after(response))
        raise BrokerUnavailable(f"{self.broker_name} is unavailable.")  # unreachable; keeps type checkers calm


def _unavailable(message: str, changes: bool, may_have_arrived: bool, **kwargs) -> BrokerUnavailable:
    error = BrokerUnavailable(message, **kwargs)
    error.may_have_arrived = changes and may_have_arrived
    return error


def _may_have_arrived(error: requests.RequestException) -> bool:
    """Only a connection that was never made proves the broker did not get the request (refused or
    timed out while connecting); a read timeout or a dropped connection may come after it acted."""
    if isinstance(error, requests.ConnectTimeout):
        return False
    reason = error.args[0] if error.args else None
    return not isinstance(getattr(reason, "reason", reason), NewConnectionError)


def _retry_after(response: requests.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


def _sleep(attempt: int, retry_after: float | None) -> None:
    time.sleep(retry_after if retry_after is not None and retry_after > 0 else BASE_BACKOFF_SECONDS * 2 ** (attempt - 1))
