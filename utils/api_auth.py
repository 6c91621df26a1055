"""API access (issue 3): API keys, access/refresh tokens, Bearer authentication and per-credential limits.

Credentials:
- API key `tw_<43 base62 chars: 256 random bits><6 base62 chars: CRC32>`; the checksum rejects a typo
  without touching the database; only the SHA-256 of the whole key is stored, plus a display prefix.
- Access token: a JWT (HS256, key = HKDF(SECRET_KEY)), 15 minutes, with `jti`, `sub`, `sv` (the user's
  session_version) and `fid` (refresh-token family). Revoked families live in Redis db 1 and the DB.
- Refresh token `twr_<random>`: opaque, hash stored, one use, 7 days absolute per family.

Hot path (see `benchmarks/api_auth.py`): an API key's row, its user and "this token family is not
revoked" are cached per process while the process is subscribed to a Redis pub/sub channel; every commit
that changes a User, ApiKey or RefreshToken publishes there and empties the caches (the committing
process at once, the others within milliseconds; without a live subscription nothing is cached).
Per-credential rate limits take permits from Redis in small leases; key usage is summed in process
and written to the database at most once a minute per key.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import redis
from flask import current_app, g, request
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from models import ApiKey, ApiKeyStatus, RefreshToken, User, utcnow
from utils import audit
from utils.database import held_object, new_persistent, owned_row
from utils.dbtypes import iso_utc
from utils.errors import BadRequest, DomainError, RateLimited, Unauthorized, ValidationFailed
from utils.extensions import client_ip, db

log = logging.getLogger("tradewarden.api_auth")

PUBLIC_ATTR = "tw_api_public"
KEY_PREFIX, REFRESH_PREFIX = "tw_", "twr_"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_BODY_LENGTH, KEY_CHECKSUM_LENGTH, DISPLAY_PREFIX_LENGTH = 43, 6, 8
KEY_LENGTH = len(KEY_PREFIX) + KEY_BODY_LENGTH + KEY_CHECKSUM_LENGTH
KEY_PATTERN = re.compile(rf"^tw_[0-9A-Za-z]{{{KEY_BODY_LENGTH + KEY_CHECKSUM_LENGTH}}}$")
JWT_PATTERN = re.compile(r"^[A-Za-z0-9_-]{10,2000}\.[A-Za-z0-9_-]{10,4000}\.[A-Za-z0-9_-]{20,200}$")
REFRESH_PATTERN = re.compile(r"^twr_[A-Za-z0-9_-]{43}$")
KEY_DEFAULT_DAYS, KEY_MAX_DAYS, KEY_NAME_MAX = 90, 365, 100
ACCESS_TOKEN_LIFETIME = timedelta(minutes=15)
REFRESH_TOKEN_LIFETIME = timedelta(days=7)
USAGE_WRITE_INTERVAL_SECONDS = 60
MAX_URL_LENGTH = 4000  # below gunicorn's default request-line limit (4094), so the answer is still JSON
TOKEN_ISSUER = "tradewarden"
QUERY_CREDENTIAL_NAMES = frozenset({"access_token", "api_key", "apikey", "token", "refresh_token",
                                    "authorization", "bearer", "jwt"})
ENDPOINT_LIMITS = {  # (requests, per seconds), per user unless the scope says otherwise
    "keys.create": (5, 60), "keys.rotate": (10, 60), "keys.revoke": (10, 60), "keys.revoke_all": (2, 60),
    "keys.list": (30, 60), "token.ip": (10, 60), "token.account": (5, 60), "refresh.ip": (30, 60),
    "revoke.ip": (30, 60),
}


def public(view):
    """Mark an API view as needing no credential (the Bearer check in routes/api skips it)."""
    setattr(view, PUBLIC_ATTR, True)
    return view


@dataclass(frozen=True)
class Credential:
    """What authenticated this request: `kind` is "api_key" or "access_token"."""

    kind: str
    id: str
    user_id: int
    expires_at: datetime
    family_id: str | None = None
    key_id: int | None = None

    @property
    def rate_key(self) -> str:
        return f"key:{self.key_id}" if self.kind == "api_key" else f"family:{self.family_id}"


# --- Redis --------------------------------------------------------------------------------------

def _redis(config_name: str) -> redis.Redis:
    clients = current_app.extensions.setdefault("tw_api_redis", {})
    client = clients.get(config_name)
    if client is None:
        client = redis.Redis.from_url(current_app.config[config_name], socket_timeout=1, socket_connect_timeout=1)
        clients[config_name] = client
    return client


def cache_redis() -> redis.Redis:
    """Redis db 1 (cache): auth epochs, revoked token families, usage counters."""
    return _redis("CACHE_REDIS_URL")


def limits_redis() -> redis.Redis:
    """Redis db 2 (rate limits)."""
    return _redis("RATELIMIT_STORAGE_URI")


# --- rate limits ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LimitState:
    limit: int
    remaining: int
    reset_at: int

    def headers(self) -> dict:
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(self.reset_at)}


def parse_rate(text: str) -> tuple[int, int]:
    """"600/minute" → (600, 60); accepts second, minute, hour, day."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:/|per)\s*(second|minute|hour|day)s?\s*", text or "")
    if not match:
        raise ValueError(f"not a rate: {text!r}")
    seconds = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[match.group(2)]
    return int(match.group(1)), seconds


class Leases:
    """Permits taken from the shared Redis counter in small batches and spent locally.

    The global count never exceeds the limit (a batch is granted only within it); a process may hold
    at most one unspent batch per window, so a little of the limit can go unused at a window's end.
    Limits up to LEASE_EXACT_BELOW take one permit at a time (exact, e.g. "create 5/min").
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.held: dict[str, list[int]] = {}  # counter name → [permits left, global count after the lease]

    def take(self, name: str) -> tuple[int, int] | None:
        with self.lock:
            lease = self.held.get(name)
            if lease and lease[0] > 0:
                lease[0] -= 1
                return lease[0], lease[1]
        return None

    def store(self, name: str, permits: int, counted: int) -> None:
        with self.lock:
            if len(self.held) > 50_000:
                self.held.clear()
            self.held[name] = [permits, counted]


LEASE_EXACT_BELOW, LEASE_MAX_BATCH = 100, 20


def _per_app(name: str, factory):
    found = current_app.extensions.get(name)
    if found is None:
        found = current_app.extensions.setdefault(name, factory())
    return found


def hit_limit(scope: str, identity: str, limit: int, period: int) -> LimitState:
    """Count one hit in a fixed window; raises RateLimited (429, Retry-After) when over the limit.

    If Redis is unreachable the request is allowed (logged): the limits protect, they must not take
    the API down with them.
    """
    now = int(time.time())
    window = now - now % period
    reset_at = window + period
    name = f"tw:rl:{scope}:{identity}:{window}"
    leases = _per_app("tw_rate_leases", Leases)
    local = leases.take(name)
    if local is not None:
        return LimitState(limit, max(0, limit - local[1]) + local[0], reset_at)
    batch = 1 if limit < LEASE_EXACT_BELOW else min(LEASE_MAX_BATCH, limit // 50)
    try:
        pipe = limits_redis().pipeline(transaction=False)
        pipe.incrby(name, batch)
        pipe.expire(name, period + 1, nx=True)
        counted = pipe.execute()[0]
    except redis.RedisError:
        log.warning("rate limit store unreachable; allowing %s", scope)
        return LimitState(limit, limit, reset_at)
    granted = max(0, min(batch, limit - (counted - batch)))
    if granted == 0:
        state = LimitState(limit, 0, reset_at)
        headers = {**state.headers(), "Retry-After": str(max(1, reset_at - now))}
        raise RateLimited(details={"limit": f"{limit} per {period} seconds"}, headers=headers)
    if granted > 1:
        leases.store(name, granted - 1, counted)
    return LimitState(limit, max(0, limit - counted) + granted - 1, reset_at)


def limit_endpoint(scope: str, identity) -> LimitState:
    """Apply the fixed limit for `scope` (ENDPOINT_LIMITS) to `identity`; headers go on the response."""
    limit, period = ENDPOINT_LIMITS[scope]
    state = hit_limit(scope, str(identity), limit, period)
    g.tw_endpoint_limit = state
    return state


# --- API key format -----------------------------------------------------------------------------

def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, remainder = divmod(number, 62)
        digits.append(BASE62[remainder])
    return "".join(reversed(digits)).rjust(width, "0")


def _checksum(body: str) -> str:
    return _base62(zlib.crc32((KEY_PREFIX + body).encode()), KEY_CHECKSUM_LENGTH)


def generate_key_secret() -> str:
    """A new API key string: tw_ + 256 random bits in base62 + CRC32 checksum in base62."""
    body = _base62(int.from_bytes(secrets.token_bytes(32), "big"), KEY_BODY_LENGTH)
    return KEY_PREFIX + body + _checksum(body)


def key_is_well_formed(unsafe_key: str) -> bool:
    """Shape and checksum only (no database): a mistyped key is refused here."""
    if len(unsafe_key) != KEY_LENGTH or not KEY_PATTERN.match(unsafe_key):
        return False
    body = unsafe_key[len(KEY_PREFIX):len(KEY_PREFIX) + KEY_BODY_LENGTH]
    return hmac.compare_digest(unsafe_key[-KEY_CHECKSUM_LENGTH:], _checksum(body))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:len(KEY_PREFIX) + DISPLAY_PREFIX_LENGTH]


def key_status(key: ApiKey, now: datetime | None = None) -> ApiKeyStatus:
    """The effective status: an active or rotated key past its expiry (or grace) shows as expired."""
    now = now or utcnow()
    if key.status in (ApiKeyStatus.ACTIVE, ApiKeyStatus.ROTATED) and now >= key.expires_at:
        return ApiKeyStatus.EXPIRED
    if key.status == ApiKeyStatus.ROTATED and (key.grace_until is None or now >= key.grace_until):
        return ApiKeyStatus.EXPIRED
    return key.status


def key_is_usable(status: ApiKeyStatus, expires_at: datetime, grace_until: datetime | None,
                  now: datetime) -> bool:
    if now >= expires_at:
        return False
    if status == ApiKeyStatus.ACTIVE:
        return True
    return status == ApiKeyStatus.ROTATED and grace_until is not None and now < grace_until


# --- per-process cache of hot lookups, invalidated through Redis pub/sub ------------------------

INVALIDATION_CHANNEL = "tw:auth:invalidate"
CACHE_MAX_AGE_SECONDS = 60.0


@dataclass(frozen=True)
class CachedKey:
    key_id: int
    user_id: int
    status: ApiKeyStatus
    expires_at: datetime
    grace_until: datetime | None
    loaded_at: float


class AuthCache:
    """API-key rows, detached users and known-good token families of one process.

    Used only while this process is subscribed to INVALIDATION_CHANNEL: every commit that changes a
    User, an ApiKey or a RefreshToken publishes there, and each message empties the cache. A load that
    raced with a message is not stored (the generation moved), and no entry outlives CACHE_MAX_AGE_SECONDS.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.generation = 0
        self.keys: dict[str, CachedKey] = {}
        self.users: dict[int, tuple[float, User]] = {}
        self.families: dict[str, float] = {}

    def invalidate(self) -> None:
        with self.lock:
            self.generation += 1
            self.keys, self.users, self.families = {}, {}, {}

    def fresh(self, table: dict, name):
        entry = table.get(name)
        if entry is None:
            return None
        loaded_at = entry.loaded_at if isinstance(entry, CachedKey) else entry if isinstance(entry, float) else entry[0]
        return entry if time.monotonic() - loaded_at < CACHE_MAX_AGE_SECONDS else None

    def store(self, table_name: str, name, entry, generation: int) -> None:
        with self.lock:
            table = getattr(self, table_name)
            if generation == self.generation and len(table) < 10_000:
                table[name] = entry


class Invalidator:
    """One subscriber thread per process and Redis URL; empties every registered cache on each message."""

    _registry: dict[tuple[int, str], "Invalidator"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, url: str):
        import weakref
        self.url, self.caches, self.live = url, weakref.WeakSet(), threading.Event()
        threading.Thread(target=self._run, name="tw-auth-invalidator", daemon=True).start()

    @classmethod
    def for_url(cls, url: str) -> "Invalidator":
        import os
        with cls._registry_lock:
            found = cls._registry.get((os.getpid(), url))
            if found is None:
                found = cls._registry[(os.getpid(), url)] = cls(url)
            return found

    def clear_all(self) -> None:
        for cache in list(self.caches):
            cache.invalidate()

    def _run(self) -> None:
        while True:
            try:
                self._listen()
            except (redis.RedisError, OSError, ValueError):
                pass
            self.live.clear()
            self.clear_all()
            time.sleep(0.5)

    def _listen(self) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, health_check_interval=15)
        pubsub = client.pubsub()
        pubsub.subscribe(INVALIDATION_CHANNEL)
        while True:
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            self.clear_all()  # the subscription confirmation too: nothing cached before it can be trusted
            if message["type"] == "subscribe":
                self.live.set()


def auth_cache() -> AuthCache | None:
    """This app's cache when its invalidation subscription is live, else None (every lookup goes to the source)."""
    state = current_app.extensions.get("tw_auth_cache")
    if state is None:
        invalidator = Invalidator.for_url(current_app.config["CACHE_REDIS_URL"])
        cache = AuthCache()
        invalidator.caches.add(cache)
        state = current_app.extensions.setdefault("tw_auth_cache", (cache, invalidator))
    cache, invalidator = state
    return cache if invalidator.live.is_set() else None


def _family_key(family_id: str) -> str:
    return f"tw:auth:revoked-family:{family_id}"


def publish_auth_change(user_ids) -> None:
    """Tell every process (this one at once) that these users' credentials changed; called after a commit."""
    if not user_ids:
        return
    state = current_app.extensions.get("tw_auth_cache")
    if state is not None:
        state[1].clear_all()
    try:
        cache_redis().publish(INVALIDATION_CHANNEL, ",".join(str(user_id) for user_id in sorted(user_ids)))
    except redis.RedisError:  # subscribers lose their connection too and empty their caches
        log.error("could not publish credential change for users %s", sorted(user_ids))


def note_auth_change(session: Session, user_id: int) -> None:
    """Remember that `user_id`'s credentials changed; the change is published after the commit."""
    session.info.setdefault("tw_auth_changed", set()).add(user_id)


def _collect_changes(session, flush_context, instances) -> None:
    for obj in list(session.dirty) + list(session.new) + list(session.deleted):
        if isinstance(obj, User) and obj.id is not None:
            note_auth_change(session, obj.id)
        elif isinstance(obj, (ApiKey, RefreshToken)) and obj.user_id is not None:
            note_auth_change(session, obj.user_id)


def _after_commit(session) -> None:
    changed = session.info.pop("tw_auth_changed", None)
    if changed:
        try:
            publish_auth_change(changed)
        except RuntimeError:  # committed outside an app context: nothing cached here to drop
            pass


def _after_rollback(session) -> None:
    session.info.pop("tw_auth_changed", None)


def init_app(app) -> None:
    """Listen for User/ApiKey/RefreshToken changes so cached credentials are dropped after each commit."""
    if not event.contains(Session, "before_flush", _collect_changes):
        event.listen(Session, "before_flush", _collect_changes)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", _after_soft_rollback)


def _after_soft_rollback(session, previous_transaction) -> None:
    _after_rollback(session)


# --- verifying a Bearer credential --------------------------------------------------------------

class CredentialRejected(Unauthorized):
    """A Bearer credential that is missing, malformed, unknown, expired or revoked (always 401)."""

    code, message = "invalid_credential", "The credential is missing, invalid, expired or revoked."

    def __init__(self, *, details: dict | None = None, audit_user_id: int | None = None):
        super().__init__(details=details)
        self.audit_user_id = audit_user_id


class RefreshTokenReused(CredentialRejected):
    """A used refresh token came back: its family is revoked (commit that before answering 401)."""


def should_audit_denial(reason: str) -> bool:
    """At most one denial event per client address and reason per minute (a flood must not fill the log)."""
    try:
        return bool(cache_redis().set(f"tw:audit:denied:{client_ip()}:{reason}", "1", nx=True, ex=60))
    except redis.RedisError:
        return True


def _rejected(reason: str, user_id: int | None = None) -> CredentialRejected:
    return CredentialRejected(details={"reason": reason}, audit_user_id=user_id)


def verify_api_key(unsafe_key: str) -> tuple[Credential, User]:
    """The credential and user for an API key; raises CredentialRejected (typos never reach the DB)."""
    if not key_is_well_formed(unsafe_key):
        raise _rejected("malformed_api_key")
    secret_hash = hash_secret(unsafe_key)
    cache = auth_cache()
    entry = cache.fresh(cache.keys, secret_hash) if cache is not None else None
    if entry is None:
        entry = _load_key(secret_hash, cache)
    if not key_is_usable(entry.status, entry.expires_at, entry.grace_until, utcnow()):
        raise _rejected("api_key_not_usable", entry.user_id)
    user = load_api_user(entry.user_id, cache)
    credential = Credential(kind="api_key", id=str(entry.key_id), user_id=user.id, key_id=entry.key_id,
                            expires_at=entry.grace_until if entry.status == ApiKeyStatus.ROTATED else entry.expires_at)
    return credential, user


def _load_key(secret_hash: str, cache: AuthCache | None) -> CachedKey:
    generation = cache.generation if cache is not None else None
    row = db.session.execute(select(ApiKey.id, ApiKey.user_id, ApiKey.status, ApiKey.expires_at, ApiKey.grace_until)
                             .where(ApiKey.secret_hash == secret_hash)).first()
    if row is None:
        raise _rejected("unknown_api_key")
    entry = CachedKey(key_id=row.id, user_id=row.user_id, status=row.status, expires_at=row.expires_at,
                      grace_until=row.grace_until, loaded_at=time.monotonic())
    if cache is not None:
        cache.store("keys", secret_hash, entry, generation)
    return entry


def load_api_user(user_id: int, cache: AuthCache | None) -> User:
    """The active user, from the process cache when possible, attached to this request's session."""
    cached = cache.fresh(cache.users, user_id) if cache is not None else None
    if cached is not None:
        user = _attach_copy(user_id, cached[1])
    else:
        generation = cache.generation if cache is not None else None
        user = db.session.get(User, user_id)
        if user is not None and cache is not None:
            cache.store("users", user_id, (time.monotonic(), _column_values(user)), generation)
    if user is None or not user.is_active:
        raise _rejected("user_inactive", user_id)
    return user


_USER_COLUMNS = tuple(column.key for column in User.__table__.columns)


def _column_values(user: User) -> dict:
    return {name: getattr(user, name) for name in _USER_COLUMNS}


def _attach_copy(user_id: int, values: dict) -> User:
    """A persistent, clean User built from cached column values, without a SELECT (cheaper than merge)."""
    present = held_object(User, user_id)
    if present is not None:  # the session already holds this user (e.g. a test's own object)
        return present
    return new_persistent(User, values)


def verify_access_token(unsafe_token: str) -> tuple[Credential, User]:
    """The credential and user for a JWT access token; raises CredentialRejected."""
    claims = decode_access_token(unsafe_token)
    user_id, family_id = claims["sub"], claims["fid"]
    cache = auth_cache()
    if family_revoked(family_id, cache):
        raise _rejected("token_revoked", user_id)
    user = load_api_user(user_id, cache)
    if user.session_version != claims["sv"]:
        raise _rejected("session_version_changed", user_id)
    credential = Credential(kind="access_token", id=claims["jti"], user_id=user_id, family_id=family_id,
                            expires_at=datetime.fromtimestamp(claims["exp"], tz=timezone.utc))
    return credential, user


def family_revoked(family_id: str, cache: AuthCache | None) -> bool:
    """Is this token family revoked? Redis db 1 (the DB when Redis is down); a "no" is cached per process."""
    if cache is not None and cache.fresh(cache.families, family_id) is not None:
        return False
    generation = cache.generation if cache is not None else None
    try:
        revoked = bool(cache_redis().exists(_family_key(family_id)))
    except redis.RedisError:
        return family_revoked_in_db(family_id)
    if not revoked and cache is not None:
        cache.store("families", family_id, time.monotonic(), generation)
    return revoked


def family_revoked_in_db(family_id: str) -> bool:
    return db.session.scalar(select(RefreshToken.id).where(RefreshToken.family_id == family_id,
                                                           RefreshToken.revoked_at.is_not(None)).limit(1)) is not None


def verify_bearer(unsafe_credential: str) -> tuple[Credential, User]:
    """Route a Bearer value to the API-key or access-token check; raises CredentialRejected."""
    if unsafe_credential.startswith(KEY_PREFIX):
        return verify_api_key(unsafe_credential)
    if JWT_PATTERN.match(unsafe_credential):
        return verify_access_token(unsafe_credential)
    raise _rejected("unrecognised_credential")


def bearer_from_request() -> str:
    """The Bearer value of the Authorization header; raises CredentialRejected when absent or another scheme."""
    value = bearer_value(request.headers.get("Authorization", ""))
    if value is None:
        raise _rejected("missing_bearer")
    return value


def bearer_value(header: str) -> str | None:
    """The credential of an `Authorization: Bearer <value>` header; None when empty or another scheme."""
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def reject_query_credentials() -> None:
    """A credential in the URL leaks into logs and histories: refuse it with 400."""
    for name, values in request.args.lists():
        lowered = name.lower()
        if lowered in QUERY_CREDENTIAL_NAMES or any(_looks_like_credential(value) for value in values):
            raise BadRequest("Credentials must be sent in the Authorization header, never in the URL.",
                             code="credential_in_query", details={"parameter": name[:64]})


def _looks_like_credential(value: str) -> bool:
    return value.startswith((KEY_PREFIX, REFRESH_PREFIX)) or bool(JWT_PATTERN.match(value))


def reject_long_urls() -> None:
    if len(request.path) + len(request.environ.get("QUERY_STRING", "")) > MAX_URL_LENGTH:
        raise DomainError("The URL is too long.", code="uri_too_long", status=414)


def authenticate_request() -> bool:
    """before_request of the API: sets g.api_user and g.api_credential or raises 400/401/414/429.

    Returns True when key usage statistics were written (the hook commits them).
    """
    reject_long_urls()
    reject_query_credentials()
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    if view is None or getattr(view, PUBLIC_ATTR, False):
        return False
    credential, user = verify_bearer(bearer_from_request())
    g.api_user, g.api_credential = user, credential
    limit, period = _per_app("tw_api_rate", lambda: parse_rate(current_app.config.get("API_RATE_LIMIT") or "600/minute"))
    g.tw_credential_limit = hit_limit("credential", credential.rate_key, limit, period)
    return credential.kind == "api_key" and note_key_use(credential.key_id)


def add_rate_limit_headers(response):
    """after_request: X-RateLimit-* of the endpoint limit if one applied, else of the credential limit."""
    state = g.get("tw_endpoint_limit") or g.get("tw_credential_limit")
    if state is not None:
        for name, value in state.headers().items():
            response.headers.setdefault(name, value)
    return response


# --- usage accounting (at most one DB write per key per minute) ---------------------------------

class UsageCounter:
    """Uses counted in process, added to a Redis counter every few seconds; at most one process per key
    and minute wins the Redis NX throttle and writes the sum with last_used_at to the database."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pending: dict[int, int] = {}
        self.next_push: dict[int, float] = {}

    def count(self, key_id: int, push_every: float) -> int:
        """Count one use; returns how many uses to push to Redis now (0 = not yet)."""
        now = time.monotonic()
        with self.lock:
            self.pending[key_id] = self.pending.get(key_id, 0) + 1
            if now < self.next_push.get(key_id, 0.0):
                return 0
            self.next_push[key_id] = now + push_every
            return self.pending.pop(key_id)


def note_key_use(key_id: int) -> bool:
    """Count a use; once a minute per key (Redis SET NX EX) add the summed uses and last_used_at to the
    key's row (flushed, not committed). Returns True when the row was updated."""
    push_every = float(current_app.config.get("API_KEY_USAGE_PUSH_SECONDS", 5))
    uses = _per_app("tw_usage_counter", UsageCounter).count(key_id, push_every)
    if not uses:
        return False
    counter, throttle = f"tw:api:key-uses:{key_id}", f"tw:api:key-touch:{key_id}"
    try:
        pipe = cache_redis().pipeline(transaction=False)
        pipe.incrby(counter, uses)
        pipe.expire(counter, 7 * 86400)
        pipe.set(throttle, "1", nx=True, ex=USAGE_WRITE_INTERVAL_SECONDS)
        first_in_window = pipe.execute()[2]
        if not first_in_window:
            return False
        total = int(cache_redis().getdel(counter) or 0)
    except redis.RedisError:
        return False  # usage statistics are best effort; authentication already succeeded
    return flush_key_usage(key_id, total)


def flush_key_usage(key_id: int, uses: int) -> bool:
    """Add `uses` to the key's count and stamp last_used_at (the caller commits)."""
    if uses <= 0:
        return False
    db.session.execute(update(ApiKey).where(ApiKey.id == key_id)
                       .values(usage_count=ApiKey.usage_count + uses, last_used_at=utcnow()))
    return True


# --- API keys -----------------------------------------------------------------------------------

def _validated_name(unsafe_name) -> str:
    if not isinstance(unsafe_name, str) or not unsafe_name.strip():
        raise ValidationFailed("Give the key a name.", details={"field": "name"})
    name = " ".join(unsafe_name.split())
    if len(name) > KEY_NAME_MAX or audit.CONTROL.search(name):
        raise ValidationFailed(f"Use at most {KEY_NAME_MAX} printable characters.", details={"field": "name"})
    return name


def _validated_days(unsafe_days) -> int:
    if unsafe_days is None:
        return KEY_DEFAULT_DAYS
    if isinstance(unsafe_days, bool) or not isinstance(unsafe_days, int) or not 1 <= unsafe_days <= KEY_MAX_DAYS:
        raise ValidationFailed(f"expires_in_days must be a whole number from 1 to {KEY_MAX_DAYS}.",
                               details={"field": "expires_in_days"})
    return unsafe_days


def create_api_key(user: User, unsafe_name, unsafe_expires_in_days=None,
                   rotated_from: ApiKey | None = None) -> tuple[ApiKey, str]:
    """Add a new active key for `user` and return (row, secret); the secret is never stored or shown again.

    Raises ValidationFailed for a bad name or expiry (1–365 days). Records `api_key.created`.
    """
    name, days = _validated_name(unsafe_name), _validated_days(unsafe_expires_in_days)
    secret, now = generate_key_secret(), utcnow()
    key = ApiKey(user_id=user.id, name=name, prefix=display_prefix(secret), secret_hash=hash_secret(secret),
                 status=ApiKeyStatus.ACTIVE, created_at=now, expires_at=now + timedelta(days=days),
                 rotated_from_id=rotated_from.id if rotated_from else None)
    db.session.add(key)
    db.session.flush()
    if rotated_from is None:
        audit.record("api_key.created", user=user, details={"key_id": key.id, "key_prefix": key.prefix,
                                                             "key_name": name, "expires_in_days": days})
    return key, secret


def list_api_keys(user: User) -> list[ApiKey]:
    """The user's keys, newest first (all statuses)."""
    return list(db.session.scalars(select(ApiKey).where(ApiKey.user_id == user.id)
                                   .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())))


def get_api_key(user: User, key_id: int) -> ApiKey:
    """One of the user's keys; another user's key or an unknown id raises NotFound."""
    return owned_row(ApiKey, user, key_id, "No such API key.", code="api_key_not_found")


def rotate_api_key(user: User, key_id: int) -> tuple[ApiKey, str, ApiKey]:
    """Replace an active key: a new key (same name and lifetime) and the old one `rotated` for the grace period.

    Returns (new key, its secret, old key). Raises NotFound, or Conflict when the key is not active.
    """
    from utils.errors import Conflict
    old = get_api_key(user, key_id)
    if key_status(old) != ApiKeyStatus.ACTIVE:
        raise Conflict("Only an active key can be rotated.", code="api_key_not_active",
                       details={"status": key_status(old).value})
    lifetime_days = max(1, min(KEY_MAX_DAYS, round((old.expires_at - old.created_at) / timedelta(days=1))))
    new, secret = create_api_key(user, old.name, lifetime_days, rotated_from=old)
    grace = timedelta(hours=current_app.config.get("API_KEY_ROTATION_GRACE_HOURS", 24))
    old.status, old.grace_until = ApiKeyStatus.ROTATED, min(utcnow() + grace, old.expires_at)
    audit.record("api_key.rotated", user=user, details={"key_id": old.id, "new_key_id": new.id,
                                                       "key_prefix": old.prefix, "grace_hours": grace / timedelta(hours=1)})
    return new, secret, old


def revoke_api_key(user: User, key_id: int) -> ApiKey:
    """Revoke one of the user's keys (idempotent for an already revoked key); raises NotFound."""
    key = get_api_key(user, key_id)
    if key.status != ApiKeyStatus.REVOKED:
        key.status, key.revoked_at = ApiKeyStatus.REVOKED, utcnow()
        audit.record("api_key.revoked", user=user, details={"key_id": key.id, "key_prefix": key.prefix})
    return key


def revoke_all_api_keys(user_id: int, actor: User | None = None, reason: str = "user") -> int:
    """Revoke every not-yet-revoked key of a user; returns how many. Records `api_key.revoked_all`."""
    result = db.session.execute(update(ApiKey)
                                .where(ApiKey.user_id == user_id, ApiKey.status != ApiKeyStatus.REVOKED)
                                .values(status=ApiKeyStatus.REVOKED, revoked_at=utcnow()))
    note_auth_change(db.session, user_id)
    audit.record("api_key.revoked_all", user=user_id, actor=actor,
                 details={"revoked_count": result.rowcount, "reason": reason})
    return result.rowcount


def on_user_deactivated(user: User, actor: User | None = None) -> None:
    """Called by accounts.set_active: a deactivated user's API keys and refresh tokens die now."""
    revoke_all_api_keys(user.id, actor=actor, reason="account_deactivated")
    revoke_user_refresh_tokens(user.id)


def serialize_api_key(key: ApiKey) -> dict:
    return {"id": key.id, "name": key.name, "prefix": key.prefix, "status": key_status(key).value,
            "created_at": iso_utc(key.created_at), "expires_at": iso_utc(key.expires_at),
            "grace_until": iso_utc(key.grace_until), "revoked_at": iso_utc(key.revoked_at),
            "last_used_at": iso_utc(key.last_used_at), "usage_count": key.usage_count,
            "rotated_from_id": key.rotated_from_id}


# --- access and refresh tokens ------------------------------------------------------------------

def _signing_key():
    """HS256 key = HKDF-SHA256(SECRET_KEY, info=purpose): related to, never equal to, SECRET_KEY."""
    cached = current_app.extensions.get("tw_jwt_key")
    if cached is None:
        OctKey = _authlib_jose().OctKey
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"tradewarden-api",
                   info=b"tradewarden api access token signing v1").derive(current_app.config["SECRET_KEY"].encode())
        cached = current_app.extensions.setdefault("tw_jwt_key", OctKey.import_key(raw))
    return cached


def _authlib_jose():
    """authlib's JOSE (the issue asks for it; authlib 1.x warns that joserfc will replace it in 2.0)."""
    import authlib.jose
    return authlib.jose


def _jwt_codec():
    codec = current_app.extensions.get("tw_jwt_codec")
    if codec is None:
        JsonWebToken = _authlib_jose().JsonWebToken
        codec = current_app.extensions.setdefault("tw_jwt_codec", JsonWebToken(["HS256"]))
    return codec


def issue_access_token(user: User, family_id: str) -> tuple[str, int]:
    """A signed access token for `user` in `family_id`; returns (token, lifetime seconds)."""
    now = int(time.time())
    lifetime = int(ACCESS_TOKEN_LIFETIME.total_seconds())
    claims = {"iss": TOKEN_ISSUER, "sub": str(user.id), "iat": now, "nbf": now, "exp": now + lifetime,
              "jti": secrets.token_hex(16), "sv": user.session_version, "fid": family_id, "typ": "access"}
    token = _jwt_codec().encode({"alg": "HS256", "typ": "JWT"}, claims, _signing_key())
    return token.decode(), lifetime


def decode_access_token(unsafe_token: str) -> dict:
    """Verified claims of an access token (signature, expiry, issuer, shape); raises CredentialRejected."""
    JoseError = _authlib_jose().JoseError
    try:
        claims = _jwt_codec().decode(unsafe_token, _signing_key(),
                                     claims_options={"iss": {"essential": True, "value": TOKEN_ISSUER},
                                                     "exp": {"essential": True}})
        claims.validate(leeway=5)
    except (JoseError, ValueError, TypeError):
        raise _rejected("invalid_access_token") from None
    if claims.get("typ") != "access" or not _claims_have_shape(claims):
        raise _rejected("invalid_access_token")
    return {"sub": int(claims["sub"]), "fid": claims["fid"], "jti": claims["jti"], "sv": claims["sv"],
            "exp": claims["exp"], "iat": claims.get("iat")}


def _claims_have_shape(claims) -> bool:
    return (isinstance(claims.get("sub"), str) and claims["sub"].isdigit() and isinstance(claims.get("fid"), str)
            and isinstance(claims.get("jti"), str) and isinstance(claims.get("sv"), int))


def _new_refresh_token(user: User, family_id: str, parent: RefreshToken | None, now: datetime,
                       expires_at: datetime) -> str:
    secret = REFRESH_PREFIX + secrets.token_urlsafe(32)
    db.session.add(RefreshToken(user_id=user.id, token_hash=hash_secret(secret), family_id=family_id,
                                parent_id=parent.id if parent else None, session_version=user.session_version,
                                created_at=now, expires_at=expires_at))
    return secret


def token_pair(user: User, family_id: str, refresh_token: str, lifetime: int | None = None) -> dict:
    access, lifetime = issue_access_token(user, family_id)
    return {"access_token": access, "refresh_token": refresh_token, "token_type": "Bearer", "expires_in": lifetime}


def issue_tokens(unsafe_email, unsafe_password) -> dict:
    """Check email+password (accounts.authenticate) and start a new token family.

    Returns {access_token, refresh_token, token_type, expires_in}. Raises InvalidCredentials (401,
    generic) or ValidationFailed for a malformed body. Records `api_token.issued`.
    """
    from utils import accounts
    if not isinstance(unsafe_email, str) or not isinstance(unsafe_password, str) or len(unsafe_password) > 1024:
        raise accounts.InvalidCredentials()
    user = accounts.authenticate(unsafe_email, unsafe_password)
    family_id = secrets.token_hex(16)
    now = utcnow()
    refresh = _new_refresh_token(user, family_id, None, now, now + REFRESH_TOKEN_LIFETIME)
    db.session.flush()
    audit.record("api_token.issued", user=user, details={"family_id": family_id})
    return token_pair(user, family_id, refresh)


def refresh_tokens(unsafe_refresh_token) -> dict:
    """Rotate a refresh token: a new pair in the same family, the presented token used up.

    A used token presented again revokes the whole family, records `api_token.reuse_detected` and raises
    RefreshTokenReused (the caller commits that revocation); an unknown, revoked, expired or stale
    (password changed) token raises CredentialRejected.
    """
    row = _find_refresh_token(unsafe_refresh_token)
    now = utcnow()
    if row.revoked_at is not None and row.used_at is None:
        raise _rejected("refresh_token_revoked", row.user_id)
    if row.used_at is not None:
        _revoke_family(row.family_id, row.user_id)
        audit.record("api_token.reuse_detected", user=row.user_id, details={"family_id": row.family_id})
        raise RefreshTokenReused(details={"reason": "refresh_token_reused"}, audit_user_id=row.user_id)
    user = db.session.get(User, row.user_id)
    if now >= row.expires_at or user is None or not user.is_active or user.session_version != row.session_version:
        raise _rejected("refresh_token_expired", row.user_id)
    claimed = db.session.execute(update(RefreshToken).where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
                                 .values(used_at=now)).rowcount
    if claimed != 1:  # a concurrent refresh won the race: treat like reuse
        raise _rejected("refresh_token_reused", row.user_id)
    refresh = _new_refresh_token(user, row.family_id, row, now, row.expires_at)  # absolute family lifetime
    return token_pair(user, row.family_id, refresh)


def _find_refresh_token(unsafe_token) -> RefreshToken:
    if not isinstance(unsafe_token, str) or not REFRESH_PATTERN.match(unsafe_token):
        raise _rejected("malformed_refresh_token")
    row = db.session.scalar(select(RefreshToken).where(RefreshToken.token_hash == hash_secret(unsafe_token)))
    if row is None:
        raise _rejected("unknown_refresh_token")
    return row


def _revoke_family(family_id: str, user_id: int) -> None:
    """Mark every refresh token of the family revoked (DB) and the family's access tokens dead (Redis db 1)."""
    db.session.execute(update(RefreshToken).where(RefreshToken.family_id == family_id,
                                                  RefreshToken.revoked_at.is_(None)).values(revoked_at=utcnow()))
    note_auth_change(db.session, user_id)
    try:
        ttl = int(ACCESS_TOKEN_LIFETIME.total_seconds()) + 60
        cache_redis().set(_family_key(family_id), "1", ex=ttl)
    except redis.RedisError:
        log.warning("could not mark family %s revoked in Redis; the DB check covers it", family_id)


def revoke_user_refresh_tokens(user_id: int) -> None:
    """Revoke every live refresh-token family of a user (deactivation)."""
    families = db.session.scalars(select(RefreshToken.family_id).where(RefreshToken.user_id == user_id,
                                                                       RefreshToken.revoked_at.is_(None)).distinct())
    for family_id in list(families):
        _revoke_family(family_id, user_id)


def revoke_token(unsafe_token) -> bool:
    """Revoke the family of a refresh token or an access token (RFC 7009 style: unknown tokens are ignored).

    Returns True when something was revoked. Records `api_token.revoked`.
    """
    if not isinstance(unsafe_token, str) or len(unsafe_token) > 4096:
        raise ValidationFailed("token must be a string.", details={"field": "token"})
    family_id, user_id = _family_of(unsafe_token)
    if family_id is None:
        return False
    _revoke_family(family_id, user_id)
    audit.record("api_token.revoked", user=user_id, details={"family_id": family_id})
    return True


def _family_of(unsafe_token: str) -> tuple[str | None, int | None]:
    if REFRESH_PATTERN.match(unsafe_token):
        row = db.session.scalar(select(RefreshToken).where(RefreshToken.token_hash == hash_secret(unsafe_token)))
        return (row.family_id, row.user_id) if row else (None, None)
    if JWT_PATTERN.match(unsafe_token):
        try:
            claims = decode_access_token(unsafe_token)
        except CredentialRejected:
            return None, None
        return claims["fid"], claims["sub"]
    return None, None


def token_info(user: User, credential: Credential) -> dict:
    """What the presented credential is and whom it belongs to (no secrets)."""
    return {"user_id": user.id, "email": user.email, "is_admin": bool(user.is_admin),
            "credential_type": credential.kind, "credential_id": credential.id,
            "family_id": credential.family_id, "expires_at": iso_utc(credential.expires_at)}


# --- request bodies -----------------------------------------------------------------------------

def json_object_body(allowed: set[str], required: bool = True) -> dict:
    """The request's JSON object; 400 when the body is not a JSON object, 422 for unknown fields."""
    if not request.get_data(cache=True) and not required:
        return {}
    unsafe_body = request.get_json(silent=True, force=True)
    if not isinstance(unsafe_body, dict):
        raise BadRequest("The body must be a JSON object.", code="invalid_json")
    unknown = sorted(set(unsafe_body) - allowed)
    if unknown:
        raise ValidationFailed("Unknown fields in the body.", details={"fields": [name[:64] for name in unknown[:10]]})
    return unsafe_body


def rotation_grace_hours() -> int:
    return int(current_app.config.get("API_KEY_ROTATION_GRACE_HOURS", 24))
