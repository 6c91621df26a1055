"""The per-user order lock's in-process turns (utils.locks.taking_turns, used by risk.user_lock): threads of one
process after the same user's lock wait on a thread lock rather than each polling Redis, still one at a time,
and give up with the same 409 `orders.busy` after the wait limit."""
from __future__ import annotations

import threading
import time

import pytest
import redis as redis_lib

from utils import locks, risk
from utils.errors import Conflict

WAITERS = 6
HOLD_SECONDS = 0.3


def set_calls(client) -> int:
    return int(client.info("commandstats").get("cmdstat_set", {}).get("calls", 0))


def run_in_threads(app, count: int, work) -> list[BaseException]:
    """Run `work(number)` in `count` threads inside app contexts; returns what they raised."""
    raised: list[BaseException] = []

    def run(number: int) -> None:
        with app.app_context():
            try:
                work(number)
            except BaseException as error:  # noqa: BLE001 - handed to the test
                raised.append(error)

    threads = [threading.Thread(target=run, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return raised


def test_waiting_threads_of_one_process_take_turns_without_polling_redis(app, redis_server):
    """While one thread holds user 7's lock for 0.3 s, six more wait. Polling every LOCK_POLL_SECONDS, six
    waiters would ask Redis about 6 × 60 times; in turn, only the first in line polls."""
    client = redis_lib.Redis.from_url(app.config["CACHE_REDIS_URL"])
    inside, overlaps = [], []

    def hold(_number: int) -> None:
        with risk.user_lock(7):
            overlaps.append(len(inside))
            inside.append(1)
            time.sleep(HOLD_SECONDS / 6)
            inside.pop()

    with app.app_context():
        before = set_calls(client)
        with risk.user_lock(7):
            started = threading.Thread(target=lambda: run_in_threads(app, WAITERS, hold))
            started.start()
            time.sleep(HOLD_SECONDS)
        started.join(30)
    polls = set_calls(client) - before
    assert overlaps == [0] * WAITERS  # all got it, never two at once
    one_poller = HOLD_SECONDS / risk.LOCK_POLL_SECONDS + 2 * WAITERS
    assert polls < one_poller, f"{polls} SET calls: the waiting threads polled Redis side by side"


def test_a_thread_that_waits_too_long_is_told_the_orders_are_busy(app, monkeypatch):
    monkeypatch.setattr(risk, "LOCK_WAIT_SECONDS", 0.2)

    def wait(_number: int) -> None:
        with risk.user_lock(8):
            pass

    with app.app_context(), risk.user_lock(8):
        raised = run_in_threads(app, 2, wait)
    assert [getattr(error, "code", None) for error in raised] == ["orders.busy", "orders.busy"]
    assert all(isinstance(error, Conflict) for error in raised)


def test_other_names_do_not_wait_and_no_turn_outlives_its_threads():
    entered = threading.Event()
    with locks.taking_turns("tw-test:a", 1, busy=RuntimeError("busy")):
        other = threading.Thread(target=lambda: _enter_and_signal("tw-test:b", entered))
        other.start()
        assert entered.wait(2), "a different name waited for this one"
        other.join()
        with pytest.raises(RuntimeError, match="busy"):
            _enter_from_another_thread("tw-test:a", timeout=0.1)
    assert locks._turns == {}


def _enter_and_signal(name: str, entered: threading.Event) -> None:
    with locks.taking_turns(name, 1, busy=RuntimeError("busy")):
        entered.set()


def _enter_from_another_thread(name: str, timeout: float) -> None:
    raised: list[BaseException] = []

    def enter() -> None:
        try:
            with locks.taking_turns(name, timeout, busy=RuntimeError("busy")):
                pass
        except RuntimeError as error:
            raised.append(error)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join(5)
    if raised:
        raise raised[0]
