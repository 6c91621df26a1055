"""E*TRADE: OAuth 1.0a linking (request token with `oob`, authorize URL with `key` & `token`, verifier,
access token; renew after 2 h inactivity; expiry at midnight US Eastern) and the v1 API adapter
(wire format: /work/shared/reference/brokers.md §3): preview then place with the same clientOrderId,
change preview/place, cancel, `.json` responses, and its 400-with-HTML rate limit treated as a 429.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import requests
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth1Auth, OAuth1Session
from flask import current_app, redirect, session, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Broker as BrokerName
from models import BrokerConnection, ConnectionStatus
from utils import crypto
from utils.brokers import oauth
from utils.brokers.base import AccountSnapshot, Broker, BrokerOrder, OrderRequest, Position
from utils.brokers.transport import BrokerHttp
from utils.dbtypes import utcnow
from utils.errors import (BrokerAuthExpired, BrokerRejected, BrokerUnavailable, InsufficientFunds, InvalidSymbol,
                          OrderNotCancelable, OrderNotFound)
from utils.extensions import db
from utils.market_data import Quote

log = logging.getLogger("tradewarden.brokers.etrade")

EASTERN = ZoneInfo("America/New_York")
INACTIVITY = timedelta(hours=2)
LAST_USED_WRITE_EVERY = timedelta(minutes=5)
PENDING_KEY = "etrade_pending_link"
STATUS_MAP = {"OPEN": "submitted", "EXECUTED": "filled", "CANCELLED": "cancelled", "CANCEL_REQUESTED": "pending_cancel",
              "EXPIRED": "expired", "REJECTED": "rejected", "PARTIAL": "partially_filled",
              "INDIVIDUAL_FILLS": "partially_filled"}
PRICE_TYPES = {"market": "MARKET", "limit": "LIMIT", "stop": "STOP", "stop_limit": "STOP_LIMIT"}


def _config(name: str) -> str:
    return current_app.config[f"ETRADE_{name}"]


def _api(path: str) -> str:
    return _config("API_BASE_URL").rstrip("/") + path


# --- linking (OAuth 1.0a) -----------------------------------------------------------------------

def start_link():
    """Get a request token (callback `oob`), keep it encrypted in the session, show the verifier form."""
    client = OAuth1Session(_config("CONSUMER_KEY"), _config("CONSUMER_SECRET"), redirect_uri="oob")
    try:
        token = client.fetch_request_token(_api("/oauth/request_token"), timeout=15)
    except (OAuthError, requests.RequestException, ValueError) as error:
        raise BrokerUnavailable("E*TRADE did not hand out a request token; try again shortly.") from error
    session[PENDING_KEY] = crypto.encrypt(json.dumps({"token": token["oauth_token"],
                                                      "secret": token["oauth_token_secret"]}))
    return redirect(url_for("brokers_page.etrade_verify"))


def _pending() -> dict | None:
    sealed = session.get(PENDING_KEY)
    return json.loads(crypto.decrypt(sealed)) if sealed else None


def pending_authorize_url() -> str | None:
    """E*TRADE's authorize page for the request token in progress (`key` & `token`, not `oauth_token`)."""
    pending = _pending()
    if not pending:
        return None
    from urllib.parse import urlencode
    return f"{_config('AUTHORIZE_URL')}?{urlencode({'key': _config('CONSUMER_KEY'), 'token': pending['token']})}"


def complete_link(user, verifier: str) -> BrokerConnection:
    """Trade the request token and the user's verifier for an access token; store the link; flushes.
    Raises LinkFailed (audited) when no link is in progress or E*TRADE refuses."""
    from utils import broker_links
    pending = _pending()
    session.pop(PENDING_KEY, None)  # a request token is single use, whatever happens next
    if not pending or not verifier:
        broker_links.fail_link(user, "etrade", "no_pending_link", "No E*TRADE link is in progress; start again.")
    client = OAuth1Session(_config("CONSUMER_KEY"), _config("CONSUMER_SECRET"), token=pending["token"],
                           token_secret=pending["secret"])
    try:
        token = client.fetch_access_token(_api("/oauth/access_token"), verifier=verifier, timeout=15)
    except (OAuthError, requests.RequestException, ValueError):
        broker_links.fail_link(user, "etrade", "verifier_refused",
                           "E*TRADE did not accept that verification code (it may be wrong or older than 5 minutes).")
    return broker_links.store_connection(user, "etrade", {"oauth_token": token["oauth_token"],
                                                          "oauth_token_secret": token["oauth_token_secret"]})


def next_midnight_eastern(now: datetime | None = None) -> datetime:
    """When an E*TRADE access token issued now stops working (midnight US Eastern), in UTC."""
    local = (now or utcnow()).astimezone(EASTERN)
    return datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), EASTERN).astimezone(timezone.utc)


def token_fields(token: dict):
    """The JSON to encrypt and the expiry (next midnight US Eastern) of a fresh access token."""
    body = {**token, "last_used_at": int(utcnow().timestamp())}
    return json.dumps(body), next_midnight_eastern()


def revoke(connection: BrokerConnection) -> bool:
    """Revoke the access token at E*TRADE (best effort)."""
    token = json.loads(connection.token_set)
    try:
        response = requests.get(_api("/oauth/revoke_access_token"), auth=_auth(token), timeout=15)
    except requests.RequestException:
        return False
    return response.ok


def expire_past_midnight() -> int:
    """Mark connected E*TRADE links whose day is over as `expired`; returns how many (flushes)."""
    stale = db.session.scalars(select(BrokerConnection).where(
        BrokerConnection.broker == BrokerName.ETRADE, BrokerConnection.status == ConnectionStatus.CONNECTED,
        BrokerConnection.token_expires_at <= utcnow())).all()
    for connection in stale:
        oauth.mark_expired(db.session, connection, "E*TRADE links end at midnight US Eastern. Link the account again.")
    db.session.flush()
    return len(stale)


def _auth(token: dict) -> OAuth1Auth:
    return OAuth1Auth(_config("CONSUMER_KEY"), _config("CONSUMER_SECRET"), token=token["oauth_token"],
                      token_secret=token["oauth_token_secret"])


def _usable_token(connection: BrokerConnection) -> dict:
    """The access token, after the midnight check and a renew when idle for 2 h; raises BrokerAuthExpired."""
    token = oauth.load_token(connection)
    if connection.token_expires_at and connection.token_expires_at <= utcnow():
        with Session(db.engine) as own:
            oauth.mark_expired(own, own.get(BrokerConnection, connection.id),
                               "E*TRADE links end at midnight US Eastern. Link the account again.")
            own.commit()
        db.session.expire(connection)
        raise BrokerAuthExpired("The E*TRADE link ended at midnight US Eastern; link the account again.")
    idle = utcnow() - datetime.fromtimestamp(token.get("last_used_at", 0), timezone.utc)
    if idle >= INACTIVITY:
        _renew(token)
    if idle >= LAST_USED_WRITE_EVERY:
        _touch(connection.id, token)
    return token


def _renew(token: dict) -> None:
    try:
        response = requests.get(_api("/oauth/renew_access_token"), auth=_auth(token), timeout=15)
    except requests.RequestException as error:
        raise BrokerUnavailable("E*TRADE could not be reached to renew the link.") from error
    if response.status_code == 401:
        raise BrokerAuthExpired("E*TRADE ended the link; link the account again.")
    if not response.ok:
        raise BrokerUnavailable("E*TRADE did not renew the link right now.")


def _touch(connection_id: int, token: dict) -> None:
    """Remember the last use (own transaction) so the 2-h inactivity clock is known to every worker."""
    token["last_used_at"] = int(utcnow().timestamp())
    with Session(db.engine) as own:
        row = own.get(BrokerConnection, connection_id)
        if row is not None and row.token_set:
            row.token_set, row.last_refreshed_at = json.dumps(token), utcnow()
            own.commit()


def client_order_key(client_order_id: str) -> str:
    """E*TRADE's clientOrderId: at most 20 alphanumerics, derived deterministically from ours."""
    return hashlib.sha256(client_order_id.encode()).hexdigest()[:20]


def _json(response):
    return json.loads(response.text or "null", parse_float=Decimal)


def _throttled(response) -> bool:
    return response.status_code == 400 and "rate limit" in response.text.lower() \
        and "html" in response.headers.get("Content-Type", "")


# --- the adapter --------------------------------------------------------------------------------

class ETradeBroker(Broker):
    supports_stop_orders = True

    def __init__(self, connection, account=None):
        self.connection = connection
        self.account = account or (connection.accounts[0] if connection.accounts else None)
        self.http = BrokerHttp(_config("API_BASE_URL"), lambda: {"Accept": "application/json"}, "E*TRADE",
                               auth=lambda: _auth(_usable_token(connection)), is_throttled=_throttled)

    @property
    def _base(self) -> str:
        return f"/v1/accounts/{self.account.account_hash}"

    def _call(self, method: str, path: str, **kwargs):
        response = self.http.request(method, path, **kwargs)
        if not response.ok:
            raise _error(response)
        return _json(response)

    def linked_accounts(self) -> list[oauth.LinkedAccount]:
        body = self._call("GET", "/v1/accounts/list.json")
        return [oauth.LinkedAccount(str(a["accountId"]), a["accountIdKey"], a.get("accountName") or a.get("accountDesc"),
                                    a.get("accountType"))
                for a in body["AccountListResponse"]["Accounts"]["Account"]]

    def order_body(self, request: OrderRequest) -> dict:
        """The E*TRADE order (JSON form) for our request."""
        order = {"allOrNone": False, "priceType": PRICE_TYPES[request.order_type],
                 "orderTerm": "GOOD_UNTIL_CANCEL" if request.time_in_force == "gtc" else "GOOD_FOR_DAY",
                 "marketSession": "REGULAR",
                 "Instrument": [{"Product": {"securityType": "EQ", "symbol": request.symbol},
                                 "orderAction": _action(request), "quantityType": "QUANTITY",
                                 "quantity": format(request.quantity, "f")}]}
        if request.limit_price is not None and request.order_type in ("limit", "stop_limit"):
            order["limitPrice"] = format(request.limit_price, "f")
        if request.stop_price is not None and request.order_type in ("stop", "stop_limit"):
            order["stopPrice"] = format(request.stop_price, "f")
        return {"orderType": "EQ", "clientOrderId": client_order_key(request.client_order_id), "Order": [order]}

    def _preview_then_place(self, request: OrderRequest, preview_path: str, place_path: str, method: str):
        if request.asset_type != "equity":
            raise BrokerRejected("Only equity orders are supported for E*TRADE here.", status=422)
        body = self.order_body(request)
        preview = self._call(method, preview_path, changes_nothing=True,  # a preview places nothing
                             json={"PreviewOrderRequest": body})["PreviewOrderResponse"]
        placed = self._call(method, place_path, json={"PlaceOrderRequest": {
            **body, "PreviewIds": [{"previewId": preview["PreviewIds"][0]["previewId"]}]}})["PlaceOrderResponse"]
        return self.read_back(lambda: self.get_order(str(placed["OrderIds"][0]["orderId"]), request.client_order_id))

    def place_order(self, request: OrderRequest) -> BrokerOrder:
        existing = self.find_order_by_client_id(request.client_order_id)
        if existing:
            return existing
        return self._preview_then_place(request, f"{self._base}/orders/preview.json",
                                        f"{self._base}/orders/place.json", "POST")

    def replace_order(self, broker_order_id: str, request: OrderRequest) -> BrokerOrder:
        return self._preview_then_place(request, f"{self._base}/orders/{broker_order_id}/change/preview.json",
                                        f"{self._base}/orders/{broker_order_id}/change/place.json", "PUT")

    def get_order(self, broker_order_id: str, client_order_id: str | None = None) -> BrokerOrder:
        body = self._call("GET", f"{self._base}/orders/{broker_order_id}.json")
        return _to_order(body["OrdersResponse"]["Order"][0], client_order_id)

    def find_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        return self._find_by_key(client_order_id, utcnow() - timedelta(days=1))

    def find_sent_order(self, request: OrderRequest, sent_since: datetime,
                        known_broker_ids: frozenset[str]) -> BrokerOrder | None:
        return self._find_by_key(request.client_order_id, sent_since)

    def _find_by_key(self, client_order_id: str, since: datetime) -> BrokerOrder | None:
        """Our order by its clientOrderId among the account's orders since `since`, every page (marker)."""
        key = client_order_key(client_order_id)
        params = {"count": ORDER_PAGE_SIZE, "fromDate": _etrade_date(since - timedelta(days=1)),
                  "toDate": _etrade_date(utcnow() + timedelta(days=1))}
        for _page in range(MAX_ORDER_PAGES):
            listing = (self._call("GET", f"{self._base}/orders.json", params=params) or {}).get("OrdersResponse", {})
            for order in listing.get("Order", []):
                if order.get("clientOrderId") == key:
                    return _to_order(order, client_order_id)
            if not listing.get("marker"):
                return None
            params = {**params, "marker": listing["marker"]}
        raise BrokerUnavailable(f"E*TRADE listed more than {MAX_ORDER_PAGES} pages of orders; try again later.")

    def cancel_order(self, broker_order_id: str) -> BrokerOrder:
        response = self.http.request("PUT", f"{self._base}/orders/cancel.json",
                                     json={"CancelOrderRequest": {"orderId": int(broker_order_id)}})
        if response.status_code == 404:
            raise OrderNotFound()
        if not response.ok:
            raise OrderNotCancelable(_message(response))
        return self.get_order(broker_order_id)

    def get_quotes(self, symbols: list[str]) -> dict[str, Quote]:
        quotes = {}
        for start in range(0, len(symbols), 25):  # 25 symbols per call
            body = self._call("GET", f"/v1/market/quote/{','.join(symbols[start:start + 25])}.json",
                              params={"detailFlag": "ALL"})
            for item in body["QuoteResponse"].get("QuoteData", []):
                quotes[item["Product"]["symbol"]] = Quote(
                    item["Product"]["symbol"], Decimal(str(item["All"]["bid"])), Decimal(str(item["All"]["ask"])),
                    Decimal(str(item["All"]["lastTrade"])), datetime.fromtimestamp(item["dateTimeUTC"], timezone.utc))
        return quotes

    def get_account(self) -> AccountSnapshot:
        computed = self._call("GET", f"{self._base}/balance.json",
                              params={"instType": "BROKERAGE", "realTimeNAV": "true"})["BalanceResponse"]["Computed"]
        return AccountSnapshot(cash=Decimal(str(computed["cashAvailableForInvestment"])),
                               buying_power=Decimal(str(computed.get("marginBuyingPower", computed["cashBuyingPower"]))),
                               equity=Decimal(str(computed["RealTimeValues"]["totalAccountValue"])))

    def get_positions(self) -> list[Position]:
        body = self._call("GET", f"{self._base}/portfolio.json")
        return [Position(symbol=_our_symbol(p["Product"]), asset_type=_asset_type(p["Product"]),
                         quantity=Decimal(str(p["quantity"])) * (-1 if p.get("positionType") == "SHORT" else 1),
                         average_price=Decimal(str(p.get("pricePaid", 0))),
                         market_price=Decimal(str(p["Quick"]["lastTrade"])) if p.get("Quick") else None)
                for account in body["PortfolioResponse"]["AccountPortfolio"] for p in account.get("Position", [])]


def _asset_type(product: dict) -> str:
    return "option" if product.get("securityType") == "OPTN" else "equity"


def _our_symbol(product: dict) -> str:
    """E*TRADE's Product in our symbol: the ticker, or for an option (securityType OPTN, which names only the
    underlying) the OCC symbol built from its expiry, call/put and strike."""
    if _asset_type(product) != "option":
        return product["symbol"]
    expiry = f"{int(product['expiryYear']) % 100:02d}{int(product['expiryMonth']):02d}{int(product['expiryDay']):02d}"
    strike = int(Decimal(str(product["strikePrice"])) * 1000)
    return f"{product['symbol']}{expiry}{str(product['callPut'])[0].upper()}{strike:08d}"


def _action(request: OrderRequest) -> str:
    instruction = request.instruction.upper()
    return instruction if instruction in ("BUY", "SELL", "SELL_SHORT", "BUY_TO_COVER") else request.side.upper()


ORDER_PAGE_SIZE = 100  # E*TRADE's largest page
MAX_ORDER_PAGES = 20


def _etrade_date(moment: datetime) -> str:
    """E*TRADE's MMDDYYYY, in US Eastern time (its trading day)."""
    return moment.astimezone(EASTERN).strftime("%m%d%Y")


def _to_order(order: dict, client_order_id: str | None) -> BrokerOrder:
    detail = order["OrderDetail"][0]
    instrument = detail["Instrument"][0]
    quantity = Decimal(str(instrument.get("orderedQuantity", instrument.get("quantity", 0))))
    filled = Decimal(str(instrument.get("filledQuantity", 0)))
    price = Decimal(str(instrument.get("averageExecutionPrice", 0)))
    status = STATUS_MAP.get(detail.get("status"), "submitted")
    # E*TRADE reports running totals, not executions: the order service records what the totals add.
    fees = Decimal(str(instrument.get("estimatedCommission", 0))) if status == "filled" else None
    return BrokerOrder(broker_order_id=str(order["orderId"]), client_order_id=client_order_id, status=status,
                       symbol=instrument["Product"]["symbol"], quantity=quantity, filled_quantity=filled,
                       average_fill_price=price if filled else None, total_fees=fees, executions_listed=False)


def _message(response) -> str:
    try:
        return str(json.loads(response.text)["Error"]["message"])[:240]
    except (ValueError, KeyError, TypeError):
        return f"E*TRADE answered HTTP {response.status_code}."


def _error(response):
    message = _message(response)
    if response.status_code == 404:
        return OrderNotFound(message)
    lowered = message.lower()
    if "insufficient" in lowered or "buying power" in lowered:
        return InsufficientFunds(message)
    if "not a valid symbol" in lowered:
        return InvalidSymbol(message)
    return BrokerRejected(message)
