"""`flask` commands: create-admin, rotate-encryption-key (and those later features add)."""
from __future__ import annotations

import logging

import click
from flask.cli import with_appcontext
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from utils import accounts, crypto
from utils.errors import DomainError
from utils.extensions import db

log = logging.getLogger("tradewarden.cli")


def init_app(app) -> None:
    app.cli.add_command(create_admin)
    app.cli.add_command(rotate_encryption_key)
    app.cli.add_command(prices)
    if app.config.get("SUPERADMIN_EMAIL") and app.config.get("SUPERADMIN_PASSWORD"):
        with app.app_context():
            ensure_superadmin(app.config["SUPERADMIN_EMAIL"], app.config["SUPERADMIN_PASSWORD"])


def ensure_superadmin(email: str, password: str) -> None:
    """Start-up hook: the configured admin exists afterwards (idempotent, safe in every process)."""
    try:
        accounts.ensure_admin(email, password)
        db.session.commit()
    except IntegrityError:  # another process created it at the same moment
        db.session.rollback()
    except (OperationalError, ProgrammingError):  # schema not migrated yet: `flask db upgrade` first
        db.session.rollback()
        log.warning("superadmin not ensured: the database schema is not migrated yet")
    except DomainError as error:
        db.session.rollback()
        raise SystemExit(f"tradewarden: configuration error: SUPERADMIN_EMAIL: {error.message}") from None


@click.command("create-admin")
@with_appcontext
@click.option("--email", prompt=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
def create_admin(email: str, password: str) -> None:
    """Create an admin account (or promote an existing one)."""
    problems = accounts.password_problems(password, email)
    if problems:
        raise click.ClickException(problems[0])
    try:
        user = accounts.ensure_admin(email, password)
    except DomainError as error:
        raise click.ClickException(error.message) from None
    db.session.commit()
    click.echo(f"admin ready: {user.email}")


@click.command("rotate-encryption-key")
@with_appcontext
def rotate_encryption_key() -> None:
    """Re-encrypt every encrypted column under the newest key in ENCRYPTION_KEYS."""
    try:
        changed = crypto.rotate_all(db.session, db.metadata)
    except DomainError as error:
        db.session.rollback()
        raise click.ClickException(error.message) from None
    db.session.commit()
    click.echo(f"re-encrypted {changed} values under the newest key")


# --- prices (section owner: market data) ----------------------------------------------------------

@click.group("prices")
def prices() -> None:
    """Manual market prices (MARKET_DATA_SOURCE=manual)."""


@prices.command("set")
@click.argument("symbol")
@click.argument("price")
def set_price(symbol: str, price: str) -> None:
    """Set SYMBOL's price to PRICE (e.g. `flask prices set AAPL 190.25`); resting paper orders match next."""
    from utils import market_data
    try:
        row = market_data.set_manual_price(symbol, price)
    except DomainError as error:
        db.session.rollback()
        raise click.ClickException(error.message) from None
    db.session.commit()
    click.echo(f"{row.symbol} = {format(row.price, 'f')} (as of {row.as_of.isoformat()})")
