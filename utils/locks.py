"""Holding a Redis lock for a block of work: the per-user order lock, a broker account's send turn, a
broker link's token refresh. Each caller says which domain error stands for "Redis is down" and which for
"someone else holds it"."""
from __future__ import annotations

import contextlib
import logging

import redis as redis_lib

log = logging.getLogger("tradewarden.locks")


@contextlib.contextmanager
def holding(lock, unavailable: Exception, busy: Exception):
    """Hold a Redis `lock` for the block (waiting up to its blocking timeout): raises `unavailable` when
    Redis does not answer and `busy` when the lock stays taken. A release Redis misses is logged; the lock
    then expires on its own."""
    try:
        acquired = lock.acquire()
    except redis_lib.RedisError:
        log.error("lock %s unavailable: Redis did not answer", lock.name)
        raise unavailable from None
    if not acquired:
        raise busy
    try:
        yield
    finally:
        try:
            lock.release()
        except redis_lib.RedisError:
            log.warning("lock %s expired or unreachable at release", lock.name)
