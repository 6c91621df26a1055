"""utils.locks.holding with keep_alive: a short lock timeout guards work of any length, and a holder that is
killed (a worker SIGKILLed in the middle of a send) frees the lock within that timeout."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import redis as redis_lib

from tests.conftest import ROOT
from utils import locks

HOLD_IN_A_CHILD = """
import sys, time
import redis
from utils import locks
lock = redis.Redis.from_url(sys.argv[1]).lock("tw-test:killed", timeout=1, thread_local=False)
with locks.holding(lock, unavailable=RuntimeError("down"), busy=RuntimeError("busy"), keep_alive=True):
    print("held", flush=True)
    time.sleep(60)
"""


def free(client, name: str) -> bool:
    """Whether someone else could take the lock `name` right now (taking it, then letting it go)."""
    other = client.lock(name, timeout=5)
    if not other.acquire(blocking=False):
        return False
    other.release()
    return True


def test_a_kept_alive_lock_stays_held_past_its_timeout_and_is_free_after(redis_server):
    client = redis_lib.Redis.from_url(redis_server.url)
    lock = client.lock("tw-test:kept", timeout=1, thread_local=False)
    with locks.holding(lock, unavailable=RuntimeError("down"), busy=RuntimeError("busy"), keep_alive=True):
        time.sleep(2.5)  # 2.5 timeouts
        assert not free(client, "tw-test:kept")
    assert free(client, "tw-test:kept")


def test_a_killed_holder_frees_the_lock_within_its_timeout(redis_server):
    client = redis_lib.Redis.from_url(redis_server.url)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_IN_A_CHILD, redis_server.url], cwd=ROOT,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        time.sleep(2)  # twice its timeout: still held, because the holder renews it
        assert not free(client, "tw-test:killed")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    killed_at = time.monotonic()
    while not free(client, "tw-test:killed"):
        assert time.monotonic() - killed_at < 2, "the lock outlived its killed holder"
        time.sleep(0.05)
