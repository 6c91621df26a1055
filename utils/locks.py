"""Holding a Redis lock for a block of work: the per-user order lock, a broker account's send turn, a
broker link's token refresh. Each caller says which domain error stands for "Redis is down" and which for
"someone else holds it". `taking_turns` lines up the threads of one process that want the same lock."""
from __future__ import annotations

import contextlib
import logging
import threading

import redis as redis_lib

log = logging.getLogger("tradewarden.locks")

# name → [the thread lock of that name, how many threads use it now]; an entry goes when the last one leaves.
_turns: dict[str, list] = {}
_turns_guard = threading.Lock()


@contextlib.contextmanager
def taking_turns(name: str, timeout: float, busy: Exception):
    """Let the threads of this process that want the Redis lock `name` wait for it one at a time, on a thread
    lock that costs nothing while they wait; raises `busy` after `timeout` seconds.

    A Redis lock is waited for by asking Redis again and again: with several web threads after the same
    user's order lock, each spent its time polling (a fifth of the web process's CPU under load, see
    benchmarks/orders.py). Behind this gate only one thread per process polls."""
    with _turns_guard:
        turn = _turns.setdefault(name, [threading.Lock(), 0])
        turn[1] += 1
    try:
        if not turn[0].acquire(timeout=timeout):
            raise busy
        try:
            yield
        finally:
            turn[0].release()
    finally:
        with _turns_guard:
            turn[1] -= 1
            if turn[1] == 0:
                del _turns[name]


@contextlib.contextmanager
def holding(lock, unavailable: Exception, busy: Exception, keep_alive: bool = False):
    """Hold a Redis `lock` for the block (waiting up to its blocking timeout): raises `unavailable` when
    Redis does not answer and `busy` when the lock stays taken. A release Redis misses is logged; the lock
    then expires on its own.

    `keep_alive` renews the lock's timeout every third of it while the block runs, so a short timeout can
    guard work of any length and still free the lock soon after a holder that was killed (the lock must be
    made with thread_local=False, for the renewing thread to use its token)."""
    try:
        acquired = lock.acquire()
    except redis_lib.RedisError:
        log.error("lock %s unavailable: Redis did not answer", lock.name)
        raise unavailable from None
    if not acquired:
        raise busy
    stop_renewing = _renew_until_set(lock) if keep_alive else None
    try:
        yield
    finally:
        if stop_renewing is not None:
            stop_renewing()
        try:
            lock.release()
        except redis_lib.RedisError:
            log.warning("lock %s expired or unreachable at release", lock.name)


def _renew_until_set(lock):
    """Start renewing `lock` in a daemon thread; returns the function that stops it (and waits for it)."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lock.timeout / 3):
            try:
                lock.reacquire()
            except redis_lib.RedisError:  # LockError too: the lock was lost meanwhile
                log.warning("lock %s could not be renewed; it may expire while held", lock.name)

    thread = threading.Thread(target=renew, name=f"renew {lock.name}", daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join()
    return stop
