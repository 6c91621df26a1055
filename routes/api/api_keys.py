"""API: API keys of the signed-in user — create (shown once), list, rotate, revoke, revoke all."""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from utils import api_auth
from utils.database import ID_RULE
from utils.extensions import db
from utils.openapi import error_responses, json_body, json_response, path_id, ref

bp = Blueprint("api_keys", __name__, url_prefix="/api-keys")


@bp.get("")
def list_keys():
    api_auth.limit_endpoint("keys.list", g.api_user.id)
    keys = api_auth.list_api_keys(g.api_user)
    return jsonify(items=[api_auth.serialize_api_key(key) for key in keys], next_cursor=None)


@bp.post("")
def create_key():
    api_auth.limit_endpoint("keys.create", g.api_user.id)
    body = api_auth.json_object_body({"name", "expires_in_days"})
    key, secret = api_auth.create_api_key(g.api_user, body.get("name"), body.get("expires_in_days"))
    db.session.commit()
    return jsonify({**api_auth.serialize_api_key(key), "key": secret}), 201


@bp.post(f"/<{ID_RULE}:key_id>/rotate")
def rotate_key(key_id: int):
    api_auth.limit_endpoint("keys.rotate", g.api_user.id)
    new, secret, old = api_auth.rotate_api_key(g.api_user, key_id)
    db.session.commit()
    return jsonify({**api_auth.serialize_api_key(new), "key": secret,
                    "previous": api_auth.serialize_api_key(old)}), 201


@bp.post(f"/<{ID_RULE}:key_id>/revoke")
def revoke_key(key_id: int):
    api_auth.limit_endpoint("keys.revoke", g.api_user.id)
    key = api_auth.revoke_api_key(g.api_user, key_id)
    db.session.commit()
    return jsonify(api_auth.serialize_api_key(key))


@bp.post("/revoke-all")
def revoke_all_keys():
    api_auth.limit_endpoint("keys.revoke_all", g.api_user.id)
    count = api_auth.revoke_all_api_keys(g.api_user.id, actor=g.api_user)
    db.session.commit()
    return jsonify(revoked_count=count)


_TIME = {"type": ["string", "null"], "format": "date-time"}

OPENAPI_SCHEMAS = {
    "ApiKey": {"type": "object",
               "required": ["id", "name", "prefix", "status", "created_at", "expires_at", "usage_count"],
               "properties": {
                   "id": {"type": "integer"}, "name": {"type": "string"},
                   "prefix": {"type": "string", "description": "The first characters of the key, for recognition."},
                   "status": {"type": "string", "enum": ["active", "rotated", "revoked", "expired"]},
                   "created_at": {"type": "string", "format": "date-time"},
                   "expires_at": {"type": "string", "format": "date-time"},
                   "grace_until": {**_TIME, "description": "A rotated key works until then."},
                   "revoked_at": _TIME, "last_used_at": {**_TIME, "description": "Updated at most once a minute."},
                   "usage_count": {"type": "integer", "description": "Updated at most once a minute."},
                   "rotated_from_id": {"type": ["integer", "null"]}}},
    "NewApiKey": {"allOf": [ref("ApiKey"), {
        "type": "object", "required": ["key"],
        "properties": {"key": {"type": "string", "description": "The secret. Shown only in this response."}}}]},
    "RotatedApiKey": {"allOf": [ref("NewApiKey"), {
        "type": "object", "required": ["previous"], "properties": {"previous": ref("ApiKey")}}]},
    "ApiKeyList": {"type": "object", "required": ["items", "next_cursor"],
                   "properties": {"items": {"type": "array", "items": ref("ApiKey")},
                                  "next_cursor": {"type": ["string", "null"]}}},
    "CreateApiKey": {"type": "object", "additionalProperties": False, "required": ["name"],
                     "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100},
                                    "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 365,
                                                        "default": 90}}},
}

_KEY_ID = [path_id("key_id", "API key id.")]

OPENAPI_PATHS = {
    "": {
        "get": {"summary": "List your API keys (30/min)", "operationId": "listApiKeys",
                "responses": {"200": json_response("Your keys, newest first.", ref("ApiKeyList")),
                              **error_responses(401, 429)}},
        "post": {"summary": "Create an API key (5/min); the secret is returned only once",
                 "operationId": "createApiKey", "requestBody": json_body(ref("CreateApiKey")),
                 "responses": {"201": json_response("The new key, with its secret.", ref("NewApiKey")),
                               **error_responses(400, 401, 422, 429)}},
    },
    "/{key_id}/rotate": {"post": {
        "summary": "Rotate a key (10/min): a new key; the old one keeps working for the grace period",
        "operationId": "rotateApiKey", "parameters": _KEY_ID,
        "responses": {"201": json_response("The new key (secret shown once) and the rotated one.", ref("RotatedApiKey")),
                      **error_responses(401, 404, 409, 429)}}},
    "/{key_id}/revoke": {"post": {
        "summary": "Revoke a key now (10/min)", "operationId": "revokeApiKey", "parameters": _KEY_ID,
        "responses": {"200": json_response("The revoked key.", ref("ApiKey")), **error_responses(401, 404, 429)}}},
    "/revoke-all": {"post": {
        "summary": "Revoke every key you own, including the one making this call (2/min)",
        "operationId": "revokeAllApiKeys",
        "responses": {"200": json_response("How many keys were revoked.", {
            "type": "object", "required": ["revoked_count"], "properties": {"revoked_count": {"type": "integer"}}}),
            **error_responses(401, 429)}}},
}
OPENAPI_PATHS = {"/api-keys" + path: item for path, item in OPENAPI_PATHS.items()}
