"""API: tokens. Exchange email+password for an access token and a refresh token; refresh; revoke; inspect."""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from utils import api_auth
from utils.api_auth import public
from utils.extensions import client_ip, db
from utils.openapi import error_responses, json_body, json_response, ref

bp = Blueprint("auth", __name__, url_prefix="/auth")


@bp.post("/token")
@public
def token():
    api_auth.limit_endpoint("token.ip", client_ip())
    body = api_auth.json_object_body({"email", "password"})
    api_auth.limit_endpoint("token.account", str(body.get("email", "")).strip().lower()[:254])
    pair = api_auth.issue_tokens(body.get("email"), body.get("password"))
    db.session.commit()
    return jsonify(pair)


@bp.post("/refresh")
@public
def refresh():
    api_auth.limit_endpoint("refresh.ip", client_ip())
    body = api_auth.json_object_body({"refresh_token"})
    try:
        pair = api_auth.refresh_tokens(body.get("refresh_token"))
    except api_auth.RefreshTokenReused:
        db.session.commit()  # the family's revocation and the audit event stick although the call fails
        raise
    db.session.commit()
    return jsonify(pair)


@bp.post("/revoke")
@public
def revoke():
    api_auth.limit_endpoint("revoke.ip", client_ip())
    body = api_auth.json_object_body({"token"})
    revoked = api_auth.revoke_token(body.get("token"))
    db.session.commit()
    return jsonify(revoked=revoked)


@bp.get("/token-info")
def token_info():
    return jsonify(api_auth.token_info(g.api_user, g.api_credential))


_PAIR = {"200": json_response("A new access token and refresh token.", ref("TokenPair"))}

OPENAPI_SCHEMAS = {
    "TokenRequest": {"type": "object", "additionalProperties": False, "required": ["email", "password"],
                     "properties": {"email": {"type": "string", "maxLength": 254},
                                    "password": {"type": "string", "maxLength": 1024}}},
    "TokenPair": {"type": "object", "required": ["access_token", "refresh_token", "token_type", "expires_in"],
                  "properties": {"access_token": {"type": "string", "description": "JWT, valid 15 minutes."},
                                 "refresh_token": {"type": "string", "description": "Opaque, single use."},
                                 "token_type": {"type": "string", "const": "Bearer"},
                                 "expires_in": {"type": "integer", "description": "Seconds."}}},
    "RefreshRequest": {"type": "object", "additionalProperties": False, "required": ["refresh_token"],
                       "properties": {"refresh_token": {"type": "string", "maxLength": 4096}}},
    "RevokeRequest": {"type": "object", "additionalProperties": False, "required": ["token"],
                      "properties": {"token": {"type": "string", "maxLength": 4096,
                                               "description": "A refresh token or an access token."}}},
    "TokenInfo": {"type": "object",
                  "required": ["user_id", "email", "is_admin", "credential_type", "credential_id", "expires_at"],
                  "properties": {"user_id": {"type": "integer"}, "email": {"type": "string"},
                                 "is_admin": {"type": "boolean"},
                                 "credential_type": {"type": "string", "enum": ["api_key", "access_token"]},
                                 "credential_id": {"type": "string"},
                                 "family_id": {"type": ["string", "null"]},
                                 "expires_at": {"type": ["string", "null"], "format": "date-time"}}},
}

OPENAPI_PATHS = {
    "/auth/token": {"post": {
        "summary": "Exchange email and password for an access token and a refresh token",
        "description": "Rate limited to 10/min per address and 5/min per account. The error never says "
                       "whether the email exists.",
        "operationId": "issueToken", "security": [],
        "requestBody": json_body(ref("TokenRequest")),
        "responses": {**_PAIR, **error_responses(400, 401, 422, 429)},
    }},
    "/auth/refresh": {"post": {
        "summary": "Rotate a refresh token (single use; reuse revokes the whole family)",
        "operationId": "refreshToken", "security": [],
        "requestBody": json_body(ref("RefreshRequest")),
        "responses": {**_PAIR, **error_responses(400, 401, 422, 429)},
    }},
    "/auth/revoke": {"post": {
        "summary": "Revoke a token's family (refresh token or access token); unknown tokens are ignored",
        "operationId": "revokeToken", "security": [],
        "requestBody": json_body(ref("RevokeRequest")),
        "responses": {"200": json_response("Done (also when the token was unknown).", {
            "type": "object", "required": ["revoked"], "properties": {"revoked": {"type": "boolean"}}}),
            **error_responses(400, 422, 429)},
    }},
    "/auth/token-info": {"get": {
        "summary": "Who the presented credential belongs to and when it expires",
        "operationId": "getTokenInfo",
        "responses": {"200": json_response("The credential.", ref("TokenInfo")), **error_responses(401, 429)},
    }},
}
