"""Tradewarden's data model (DESIGN §4): typed SQLAlchemy 2.0 models, enums and constraints.

Money and quantities are exact decimals (stored as text on SQLite, NUMERIC elsewhere); times are
timezone-aware UTC. Every user-owned row carries `user_id`. No I/O happens here.
"""
from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship
from utils.crypto import EncryptedText
from utils.dbtypes import ExactDecimal, UTCDateTime, utcnow
from utils.extensions import db


def str_enum(enum_class) -> db.Enum:
    """Store a StrEnum by its value, as a plain string column (no native enum type)."""
    return db.Enum(enum_class, native_enum=False, length=24, validate_strings=True,
                   values_callable=lambda members: [member.value for member in members])


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False)


# --- accounts -----------------------------------------------------------------------------------

class User(TimestampMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    session_version: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    failed_login_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    settings: Mapped["UserSettings"] = relationship(back_populates="user", uselist=False)

    # Flask-Login protocol. `current_session` is set by the session loader for this request.
    current_session = None
    is_anonymous = False

    @property
    def is_authenticated(self) -> bool:
        return True

    def get_id(self) -> str | None:
        return getattr(self, "session_token", None)


class UserSession(db.Model):
    """One browser sign-in. The cookie carries only a random token; its SHA-256 is stored here."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    remember: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()


class UserSettings(TimestampMixin, db.Model):
    """Per-user preferences: risk limits and encrypted third-party secrets."""

    __tablename__ = "user_settings"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True, nullable=False)
    # Deferred: decrypted only when read, so a tampered value breaks only the code that needs it.
    notification_bot_token: Mapped[str | None] = mapped_column(EncryptedText(2048), deferred=True)
    max_risk_per_trade_pct: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("2"), nullable=False)
    default_stop_pct: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("5"), nullable=False)
    daily_trade_limit: Mapped[int] = mapped_column(Integer, default=100, nullable=False)
    daily_notional_limit: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("500000"), nullable=False)
    max_concentration_pct: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("25"), nullable=False)
    daily_loss_limit_pct: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("5"), nullable=False)

    user: Mapped[User] = relationship(back_populates="settings")


class AuditEvent(db.Model):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    details: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True, nullable=False)


# --- API access ---------------------------------------------------------------------------------

class ApiKeyStatus(enum.StrEnum):
    ACTIVE = "active"
    ROTATED = "rotated"
    REVOKED = "revoked"
    EXPIRED = "expired"


class ApiKey(db.Model):
    """A long-lived credential for scripts. Only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    prefix: Mapped[str] = mapped_column(String(24), nullable=False)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    status: Mapped[ApiKeyStatus] = mapped_column(str_enum(ApiKeyStatus), default=ApiKeyStatus.ACTIVE, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    grace_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    usage_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    rotated_from_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))


class RefreshToken(db.Model):
    """An opaque refresh token (hash only), one link in a rotation family."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    family_id: Mapped[str] = mapped_column(String(32), index=True, nullable=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("refresh_tokens.id", ondelete="SET NULL"))
    session_version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --- brokers and trading ------------------------------------------------------------------------

class Broker(enum.StrEnum):
    PAPER = "paper"
    SCHWAB = "schwab"
    COINBASE = "coinbase"
    ETRADE = "etrade"


class ConnectionStatus(enum.StrEnum):
    CONNECTED = "connected"
    EXPIRED = "expired"
    REVOKED = "revoked"
    ERROR = "error"


class BrokerConnection(TimestampMixin, db.Model):
    __tablename__ = "broker_connections"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    broker: Mapped[Broker] = mapped_column(str_enum(Broker), nullable=False)
    status: Mapped[ConnectionStatus] = mapped_column(str_enum(ConnectionStatus), default=ConnectionStatus.CONNECTED,
                                                     nullable=False)
    token_set: Mapped[str | None] = mapped_column(EncryptedText(8192))
    token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status_detail: Mapped[str | None] = mapped_column(String(255))

    accounts: Mapped[list["BrokerAccount"]] = relationship(back_populates="connection")


class BrokerAccount(TimestampMixin, db.Model):
    __tablename__ = "broker_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    connection_id: Mapped[int] = mapped_column(ForeignKey("broker_connections.id", ondelete="CASCADE"), index=True,
                                               nullable=False)
    account_number: Mapped[str] = mapped_column(EncryptedText(1024), nullable=False)
    account_hash: Mapped[str | None] = mapped_column(EncryptedText(1024))
    last4: Mapped[str] = mapped_column(String(4), nullable=False)
    name: Mapped[str | None] = mapped_column(String(100))
    account_type: Mapped[str | None] = mapped_column(String(32))

    connection: Mapped[BrokerConnection] = relationship(back_populates="accounts")


class AssetType(enum.StrEnum):
    EQUITY = "equity"
    OPTION = "option"
    CRYPTO = "crypto"


class OrderSide(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(enum.StrEnum):
    DAY = "day"
    GTC = "gtc"


class OrderPurpose(enum.StrEnum):
    ENTRY = "entry"
    EXIT = "exit"
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"


class OrderStatus(enum.StrEnum):
    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending_cancel"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    FAILED = "failed"
    REPLACED = "replaced"
    EXPIRED = "expired"


class Order(TimestampMixin, db.Model):
    __tablename__ = "orders"
    # The risk checks read a user's orders of today (user, created) and those still working (user, status).
    __table_args__ = (Index("ix_orders_user_created", "user_id", "created_at"),
                      Index("ix_orders_user_status", "user_id", "status"),
                      Index("ix_orders_status", "status"))

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    broker_connection_id: Mapped[int] = mapped_column(ForeignKey("broker_connections.id"), index=True, nullable=False)
    client_order_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    broker_order_id: Mapped[str | None] = mapped_column(String(64), index=True)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    asset_type: Mapped[AssetType] = mapped_column(str_enum(AssetType), nullable=False)
    side: Mapped[OrderSide] = mapped_column(str_enum(OrderSide), nullable=False)
    instruction: Mapped[str] = mapped_column(String(24), nullable=False)
    order_type: Mapped[OrderType] = mapped_column(str_enum(OrderType), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal, nullable=False)
    limit_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    stop_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    time_in_force: Mapped[TimeInForce] = mapped_column(str_enum(TimeInForce), nullable=False)
    purpose: Mapped[OrderPurpose] = mapped_column(str_enum(OrderPurpose), default=OrderPurpose.ENTRY, nullable=False)
    status: Mapped[OrderStatus] = mapped_column(str_enum(OrderStatus), default=OrderStatus.PENDING, nullable=False)
    filled_quantity: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    average_fill_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    fees: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    reject_reason: Mapped[str | None] = mapped_column(String(255))
    trade_id: Mapped[int | None] = mapped_column(ForeignKey("trades.id"), index=True)
    replaces_order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"))
    submit_attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # The last send failed in a way that does not prove the broker never got it (a timeout, a 5xx): until
    # the broker answers a lookup, the order must not be called `failed`.
    send_outcome_unknown: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    stop_loss_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    take_profit_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    trailing_stop_percent: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    # Unit price the risk checks assumed at placement (a market order has no limit price to reserve with).
    estimated_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    events: Mapped[list["OrderEvent"]] = relationship(order_by="OrderEvent.id", back_populates="order")
    fills: Mapped[list["Fill"]] = relationship(order_by="Fill.id", back_populates="order")


class OrderEvent(db.Model):
    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True, nullable=False)
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str] = mapped_column(String(24), nullable=False)
    detail: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    order: Mapped[Order] = relationship(back_populates="events")


class Fill(db.Model):
    __tablename__ = "fills"
    __table_args__ = (UniqueConstraint("order_id", "broker_execution_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), nullable=False)
    broker_execution_id: Mapped[str] = mapped_column(String(64), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal, nullable=False)
    price: Mapped[Decimal] = mapped_column(ExactDecimal, nullable=False)
    fee: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    executed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    order: Mapped[Order] = relationship(back_populates="fills")


class TradeSide(enum.StrEnum):
    LONG = "long"
    SHORT = "short"


class TradeStatus(enum.StrEnum):
    PENDING = "pending"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    CANCELLED = "cancelled"


class CloseReason(enum.StrEnum):
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    MANUAL = "manual"
    BROKER = "broker"
    EXPIRED = "expired"  # an option held past its expiration, settled at its intrinsic value (paper broker)


class Trade(TimestampMixin, db.Model):
    """One position from entry to exit."""

    __tablename__ = "trades"
    __table_args__ = (Index("ix_trades_user_status", "user_id", "status"),
                      Index("ix_trades_user_closed", "user_id", "closed_at"),
                      Index("ix_trades_status_symbol", "status", "symbol"))

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    broker_connection_id: Mapped[int] = mapped_column(ForeignKey("broker_connections.id"), nullable=False)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    asset_type: Mapped[AssetType] = mapped_column(str_enum(AssetType), nullable=False)
    side: Mapped[TradeSide] = mapped_column(str_enum(TradeSide), nullable=False)
    status: Mapped[TradeStatus] = mapped_column(str_enum(TradeStatus), default=TradeStatus.PENDING, nullable=False)
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    exit_quantity: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    entry_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    exit_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    fees: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    stop_loss_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    trailing_stop_percent: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    water_mark_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    take_profit_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    close_reason: Mapped[CloseReason | None] = mapped_column(str_enum(CloseReason))
    realized_pnl: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    quote_misses: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # Automated exits (stop-loss, take-profit, expiry) the broker refused in a row, and when the next may go.
    exit_refusals: Mapped[int] = mapped_column(Integer, default=0, server_default="0", nullable=False)
    exit_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    strategy_tag: Mapped[str | None] = mapped_column(String(64))
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --- paper broker state (section owner: paper broker) -------------------------------------------

class MarketPrice(db.Model):
    """The current price of one symbol for one market-data source (`simulated` or `manual`).

    The database is the source of truth so prices survive restarts; Redis only caches quotes.
    `tick` counts random-walk steps (simulated); `as_of` is when the price was set or last moved.
    """

    __tablename__ = "market_prices"
    __table_args__ = (UniqueConstraint("source", "symbol"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    price: Mapped[Decimal] = mapped_column(ExactDecimal, nullable=False)
    tick: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    set_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class PaperAccount(TimestampMixin, db.Model):
    """The simulated brokerage account behind a user's paper BrokerConnection."""

    __tablename__ = "paper_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    connection_id: Mapped[int] = mapped_column(ForeignKey("broker_connections.id", ondelete="CASCADE"),
                                               unique=True, nullable=False)
    cash: Mapped[Decimal] = mapped_column(ExactDecimal, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), default="USD", nullable=False)
    # Bumped by every state change: the UPDATE doubles as a portable row lock (SQLite has no FOR UPDATE).
    version: Mapped[int] = mapped_column(Integer, default=0, nullable=False)


class PaperOrder(TimestampMixin, db.Model):
    """One order at the paper broker (Alpaca-like); `client_order_id` is unique per account."""

    __tablename__ = "paper_orders"
    __table_args__ = (UniqueConstraint("account_id", "client_order_id"),
                      Index("ix_paper_orders_account_status", "account_id", "status"),
                      Index("ix_paper_orders_status_symbol", "status", "symbol"))

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(36), unique=True, nullable=False)
    account_id: Mapped[int] = mapped_column(ForeignKey("paper_accounts.id", ondelete="CASCADE"), nullable=False)
    client_order_id: Mapped[str] = mapped_column(String(64), nullable=False)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    asset_type: Mapped[str] = mapped_column(String(8), nullable=False)
    side: Mapped[str] = mapped_column(String(4), nullable=False)
    instruction: Mapped[str] = mapped_column(String(24), nullable=False)
    order_type: Mapped[str] = mapped_column(String(12), nullable=False)
    time_in_force: Mapped[str] = mapped_column(String(8), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal, nullable=False)
    limit_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    stop_price: Mapped[Decimal | None] = mapped_column(ExactDecimal)
    # Unit price reserved against buying power while the order is open (buys and short sales).
    hold_price: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    hold_quantity: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    status: Mapped[str] = mapped_column(String(24), nullable=False)
    filled_quantity: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    filled_notional: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    fees: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    stop_triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reject_reason: Mapped[str | None] = mapped_column(String(255))
    replaces: Mapped[str | None] = mapped_column(String(36))
    replaced_by: Mapped[str | None] = mapped_column(String(36))
    version: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    filled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    fills: Mapped[list["PaperFill"]] = relationship(order_by="PaperFill.id", back_populates="order")


class PaperFill(db.Model):
    """One execution of a paper order."""

    __tablename__ = "paper_fills"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("paper_orders.id", ondelete="CASCADE"), index=True,
                                          nullable=False)
    execution_id: Mapped[str] = mapped_column(String(36), unique=True, nullable=False)
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal, nullable=False)
    price: Mapped[Decimal] = mapped_column(ExactDecimal, nullable=False)
    fee: Mapped[Decimal] = mapped_column(ExactDecimal, default=Decimal("0"), nullable=False)
    executed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    order: Mapped[PaperOrder] = relationship(back_populates="fills")


class PaperPosition(TimestampMixin, db.Model):
    """A net position at the paper broker: signed quantity (negative = short) and average price."""

    __tablename__ = "paper_positions"
    __table_args__ = (UniqueConstraint("account_id", "symbol"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("paper_accounts.id", ondelete="CASCADE"), nullable=False)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    asset_type: Mapped[str] = mapped_column(String(8), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal, nullable=False)
    average_price: Mapped[Decimal] = mapped_column(ExactDecimal, nullable=False)



# --- exports and sharing (section owner: exports) -----------------------------------------------

class ExportFormat(enum.StrEnum):
    CSV = "csv"
    JSON = "json"
    ZIP = "zip"


class ExportJobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


# Keyset pagination of a user's trades (`user_id = ? AND id > ? ORDER BY id`) reads an index, not a sort.
Index("ix_trades_user_id_id", Trade.user_id, Trade.id)


class StoredFile(db.Model):
    """A file in the configured storage backend; `key` is always server-generated."""

    __tablename__ = "stored_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    backend: Mapped[str] = mapped_column(String(8), nullable=False)
    key: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    filename: Mapped[str] = mapped_column(String(128), nullable=False)
    content_type: Mapped[str] = mapped_column(String(64), nullable=False)
    size: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True, nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ExportJob(TimestampMixin, db.Model):
    """A background export: progress is `rows_done` of `rows_total`; the result is a StoredFile."""

    __tablename__ = "export_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    format: Mapped[ExportFormat] = mapped_column(str_enum(ExportFormat), nullable=False)
    status: Mapped[ExportJobStatus] = mapped_column(str_enum(ExportJobStatus), default=ExportJobStatus.QUEUED,
                                                    nullable=False)
    filters: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)
    rows_total: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    rows_done: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    error: Mapped[str | None] = mapped_column(String(255))
    stored_file_id: Mapped[int | None] = mapped_column(ForeignKey("stored_files.id", ondelete="SET NULL"))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    stored_file: Mapped[StoredFile | None] = relationship()


class ShareLink(db.Model):
    """A public, redacted export behind a random token; only the token's SHA-256 is stored."""

    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    token_prefix: Mapped[str] = mapped_column(String(12), nullable=False)
    format: Mapped[ExportFormat] = mapped_column(str_enum(ExportFormat), nullable=False)
    filters: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)
    # The link shows the trades that existed when it was made, never ones added later.
    max_trade_id: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    trade_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    max_accesses: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    accessed_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_accessed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
