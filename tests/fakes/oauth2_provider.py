"""A real authlib OAuth 2.0 authorization server for the fake brokers, in memory.

Every client must send PKCE with S256 (StrictS256), redirect URIs match exactly, codes are single use.
Refresh behaviour follows the broker: Coinbase rotates single-use refresh tokens; Schwab keeps one refresh
token that dies 7 days after the original login. `counters` and `clock_offset` let tests observe and
steer the server through the fake's `/_fake/...` endpoints.
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import jsonify, request

# The fakes listen on http://127.0.0.1:<port>; authlib refuses plain http unless told otherwise.
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

FAKE_USER = {"id": "fake-user-1", "name": "Pat Example"}


@dataclass
class FakeClient(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    auth_methods: tuple[str, ...]

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris  # exact string match (RFC 9700)

    def check_client_secret(self, client_secret):
        import hmac
        return hmac.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        return method in self.auth_methods

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None
    issued_at: float

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope


@dataclass
class FakeToken(TokenMixin):
    client_id: str
    access_token: str
    refresh_token: str | None
    scope: str
    issued_at: float
    expires_in: int
    login_at: float                 # time of the browser login this token descends from
    revoked: bool = False
    extra: dict = field(default_factory=dict)

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return False

    def is_revoked(self):
        return self.revoked

    def get_user(self):
        return FAKE_USER

    def get_client(self):
        return None


class StrictS256(CodeChallenge):
    """The stock CodeChallenge only forces PKCE on public clients; this one forces S256 on everyone."""

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if data.get("code_challenge_method") != "S256" or not data.get("code_challenge"):
            raise InvalidRequestError("PKCE with code_challenge_method=S256 is required")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code):
        return authorization_code.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code):
        return authorization_code.code_challenge_method


class FakeOAuth2Provider:
    """The authorization server of one fake broker, mounted on its Flask app."""

    def __init__(self, app, *, client_id: str, client_secret: str, redirect_uris: list[str],
                 auth_methods: tuple[str, ...], access_ttl: int, rotate_refresh: bool,
                 refresh_cap_seconds: int | None, refresh_cap_error: str = "invalid_grant",
                 paths: dict[str, str], id_token: bool = False):
        self.clients = {client_id: FakeClient(client_id, client_secret, list(redirect_uris), auth_methods)}
        self.access_ttl, self.rotate_refresh = access_ttl, rotate_refresh
        self.refresh_cap_seconds, self.refresh_cap_error = refresh_cap_seconds, refresh_cap_error
        self.id_token = id_token
        self.codes: dict[str, AuthCode] = {}
        self.tokens: list[FakeToken] = []
        self.counters: Counter = Counter()
        self.clock_offset = 0.0
        self.deny_next = False
        self.lock = threading.RLock()
        self.server = self._build_server(app)
        self._mount(app, paths)

    # --- time and lookups ---------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.clock_offset

    def token_by_access(self, access_token: str) -> FakeToken | None:
        with self.lock:
            for token in self.tokens:
                if token.access_token == access_token and not token.revoked:
                    return token
        return None

    def bearer_valid(self, header: str | None) -> bool:
        """True when the Authorization header carries a live access token."""
        if not header or not header.startswith("Bearer "):
            return False
        token = self.token_by_access(header[7:])
        return bool(token) and self.now() < token.issued_at + token.expires_in

    def reset(self) -> None:
        with self.lock:
            self.codes.clear()
            self.tokens.clear()
            self.counters.clear()
            self.clock_offset, self.deny_next = 0.0, False

    # --- authlib wiring -----------------------------------------------------------------------

    def _build_server(self, app) -> AuthorizationServer:
        provider = self
        server = AuthorizationServer(app, query_client=self.clients.get, save_token=self._save_token)
        server.register_token_generator("default", self._generate_token)

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

            def save_authorization_code(self, code, req):
                data = req.payload.data
                with provider.lock:
                    provider.codes[code] = AuthCode(code, req.client.get_client_id(), req.payload.redirect_uri,
                                                    req.scope or "", data.get("code_challenge"),
                                                    data.get("code_challenge_method"), provider.now())

            def query_authorization_code(self, code, client):
                with provider.lock:
                    item = provider.codes.get(code)
                if item and item.client_id == client.get_client_id() and provider.now() - item.issued_at < 300:
                    return item
                return None

            def delete_authorization_code(self, authorization_code):
                with provider.lock:
                    provider.codes.pop(authorization_code.code, None)  # single use

            def authenticate_user(self, authorization_code):
                return FAKE_USER

        class RefreshGrant(grants.RefreshTokenGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
            INCLUDE_NEW_REFRESH_TOKEN = provider.rotate_refresh

            def authenticate_refresh_token(self, refresh_token):
                token = provider._live_refresh_token(refresh_token)
                if token and provider.refresh_cap_seconds and \
                        provider.now() - token.login_at > provider.refresh_cap_seconds:
                    if provider.refresh_cap_error == "invalid_client":
                        raise InvalidClientError(description="refresh token invalid")
                    return None
                return token

            def authenticate_user(self, refresh_token):
                self.request.login_at = refresh_token.login_at
                return FAKE_USER

            def revoke_old_credential(self, refresh_token):
                if provider.rotate_refresh:
                    with provider.lock:
                        refresh_token.revoked = True  # Coinbase: single use

        class Revocation(RevocationEndpoint):
            CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def query_token(self, token_string, token_type_hint):
                with provider.lock:
                    for token in provider.tokens:
                        if token_string in (token.access_token, token.refresh_token):
                            return token
                return None

            def revoke_token(self, token, req):
                provider.counters["revoked"] += 1
                with provider.lock:
                    token.revoked = True

        server.register_grant(CodeGrant, [StrictS256(required=True)])
        server.register_grant(RefreshGrant)
        server.register_endpoint(Revocation)
        return server

    def _live_refresh_token(self, refresh_token: str) -> FakeToken | None:
        with self.lock:
            for token in self.tokens:
                if token.refresh_token == refresh_token and not token.revoked:
                    return token
        return None

    def _generate_token(self, grant_type, client, user=None, scope=None, expires_in=None,
                        include_refresh_token=True):
        token = {"access_token": generate_token(42), "token_type": "Bearer",
                 "expires_in": int(self.access_ttl), "scope": scope or ""}
        if include_refresh_token:
            token["refresh_token"] = generate_token(48)
        if self.id_token:
            token["id_token"] = "eyJhbGciOiJub25lIn0." + generate_token(24) + "."
        return token

    def _save_token(self, token: dict, req) -> None:
        login_at = getattr(req, "login_at", None) or self.now()
        refresh = token.get("refresh_token")
        if refresh is None and getattr(req, "refresh_token", None) is not None:
            refresh = req.refresh_token.refresh_token  # Schwab: the same refresh token lives on
        with self.lock:
            self.counters["tokens_issued"] += 1
            self.tokens.append(FakeToken(req.client.get_client_id(), token["access_token"], refresh,
                                         token.get("scope", ""), self.now(), token["expires_in"], login_at))

    # --- HTTP endpoints -----------------------------------------------------------------------

    def _mount(self, app, paths: dict[str, str]) -> None:
        app.add_url_rule(paths["authorize"], "oauth_authorize", self._authorize, methods=["GET"])
        app.add_url_rule(paths["token"], "oauth_token", self._token, methods=["POST"])
        if paths.get("revoke"):
            app.add_url_rule(paths["revoke"], "oauth_revoke", self._revoke, methods=["POST"])

    def _authorize(self):
        """Consent is auto-approved for the one fake user (or denied once after /_fake/deny-next)."""
        self.counters["authorize"] += 1
        try:
            grant = self.server.get_consent_grant(end_user=FAKE_USER)
        except OAuth2Error as error:
            if getattr(error, "redirect_uri", None):
                return self.server.handle_error_response(request, error)
            return jsonify(error=error.error, error_description=error.description), 400
        user = None if self._take_deny() else FAKE_USER
        return self.server.create_authorization_response(grant=grant, grant_user=user)

    def _take_deny(self) -> bool:
        with self.lock:
            deny, self.deny_next = self.deny_next, False
        return deny

    def _token(self):
        grant_type = request.form.get("grant_type", "")
        self.counters[f"token_{grant_type}"] += 1  # token_refresh_token counts refresh requests
        return self.server.create_token_response()

    def _revoke(self):
        self.counters["revoke_requests"] += 1
        return self.server.create_endpoint_response("revocation")

    def control(self, body: dict) -> dict:
        """Apply a test's control request: advance the clock, deny the next consent, change lifetimes."""
        with self.lock:
            self.clock_offset += float(body.get("advance_seconds", 0))
            if "deny_next" in body:
                self.deny_next = bool(body["deny_next"])
            if "access_ttl" in body:
                self.access_ttl = int(body["access_ttl"])
            if body.get("reset"):
                self.reset()
        return self.stats()

    def stats(self) -> dict:
        with self.lock:
            return {"counters": dict(self.counters), "live_tokens": sum(not t.revoked for t in self.tokens),
                    "codes_outstanding": len(self.codes), "clock_offset": self.clock_offset}
