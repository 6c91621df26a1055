"""The OpenAPI 3.1 document of /api/v1, merged from every API sub-module (DESIGN §7).

Each `routes/api/<name>.py` declares `OPENAPI_PATHS` (path relative to /api/v1 → path item) and
optionally `OPENAPI_SCHEMAS`. `build_spec` merges them with the shared parts defined here: the
`Error` schema, the `bearerAuth` scheme and the common error responses (`#/components/responses/…`).
Responses every operation can produce because of the shared machinery (400 credential in the URL,
401 without a valid credential, 413 body too large, 429 rate limited) are added where missing.

Helpers for sub-modules: `ref("Name")`, `error_responses(404, 409, …)`, `json_body(schema)`,
`json_response("description", schema)`, `path_id("order_id")`.
"""
from __future__ import annotations

import copy
from importlib import import_module

from utils.database import LARGEST_ROW_ID

API_PREFIX = "/api/v1"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "Machine-readable error code, e.g. `rate_limited`."},
                "message": {"type": "string", "description": "A message safe to show to a person."},
                "details": {"type": "object", "description": "Extra facts, e.g. the offending field."},
            },
        },
    },
}

RATE_LIMIT_HEADERS = {
    "X-RateLimit-Limit": {"description": "Requests allowed in the current window.", "schema": {"type": "string"}},
    "X-RateLimit-Remaining": {"description": "Requests left in the current window.", "schema": {"type": "string"}},
    "X-RateLimit-Reset": {"description": "Unix time at which the window resets.", "schema": {"type": "string"}},
}

ERROR_RESPONSES = {
    400: ("BadRequest", "Malformed request (bad JSON, unknown parameter, or a credential in the URL)."),
    401: ("Unauthorized", "Missing, invalid, expired or revoked credential. Carries `WWW-Authenticate: Bearer`."),
    403: ("Forbidden", "The credential is valid but may not do this."),
    404: ("NotFound", "No such object (also for other users' objects)."),
    405: ("MethodNotAllowed", "The path exists but not with this method."),
    409: ("Conflict", "The object is not in a state that allows this."),
    410: ("Gone", "No longer available."),
    413: ("PayloadTooLarge", "The request body is too large."),
    414: ("UriTooLong", "The URL is too long (JSON from the app; the HTTP server itself refuses far longer lines)."),
    415: ("UnsupportedMediaType", "The body must be JSON."),
    422: ("UnprocessableEntity", "Well-formed, but a field breaks a rule."),
    429: ("TooManyRequests", "Rate limited; see `Retry-After` and `X-RateLimit-*`."),
    503: ("ServiceUnavailable", "A dependency is down; try again later."),
}


def ref(name: str) -> dict:
    """`{"$ref": "#/components/schemas/<name>"}`."""
    return {"$ref": f"#/components/schemas/{name}"}


def error_response_ref(status: int) -> dict:
    return {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}


def error_responses(*statuses: int) -> dict:
    """Response entries for these error statuses, each referencing the shared Error response."""
    return {str(status): error_response_ref(status) for status in statuses}


def json_body(schema: dict, required: bool = True) -> dict:
    """A JSON request body with this schema."""
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def json_response(description: str, schema: dict, headers: dict | None = None) -> dict:
    """A JSON response with this schema."""
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def path_id(name: str, description: str = "Object id.") -> dict:
    """A required positive-integer path parameter."""
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "integer", "minimum": 1, "maximum": LARGEST_ROW_ID}}


def shared_components() -> dict:
    """The components every module may reference: Error, bearerAuth, the error responses, rate-limit headers."""
    responses = {}
    for status, (name, description) in ERROR_RESPONSES.items():
        response = json_response(description, ref("Error"))
        if status == 429:
            response["headers"] = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}},
                                   **RATE_LIMIT_HEADERS}
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"description": "`Bearer realm=\"tradewarden\"`",
                                                        "schema": {"type": "string"}}}
        responses[name] = response
    return {
        "schemas": {"Error": ERROR_SCHEMA},
        "responses": responses,
        "headers": copy.deepcopy(RATE_LIMIT_HEADERS),
        "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "An API key (`tw_…`) or an access token from `POST /auth/token`."}},
    }


def build_spec(module_names, package: str = "routes.api", server_url: str = API_PREFIX) -> dict:
    """The merged OpenAPI 3.1 document for these API sub-modules."""
    spec = {
        "openapi": "3.1.0",
        "info": {"title": "Tradewarden API", "version": "1.0.0",
                 "description": "Trading, risk and export API of Tradewarden. Authenticate with "
                                "`Authorization: Bearer <API key or access token>`."},
        "servers": [{"url": server_url}],
        "security": [{"bearerAuth": []}],
        "paths": {},
        "components": shared_components(),
    }
    for name in module_names:
        module = import_module(f"{package}.{name}")
        _merge_module(spec, name, module)
    for path, path_item in spec["paths"].items():
        for method in HTTP_METHODS:
            if method in path_item:
                add_common_responses(path_item[method], spec["security"], has_path_params="{" in path)
    return spec


def _merge_module(spec: dict, name: str, module) -> None:
    for path, item in (getattr(module, "OPENAPI_PATHS", None) or {}).items():
        target = spec["paths"].setdefault(path, {})
        for key, value in copy.deepcopy(item).items():
            if key in HTTP_METHODS:
                value.setdefault("tags", [name])
            target[key] = value
    for schema_name, schema in (getattr(module, "OPENAPI_SCHEMAS", None) or {}).items():
        spec["components"]["schemas"].setdefault(schema_name, copy.deepcopy(schema))


def add_common_responses(operation: dict, default_security: list, has_path_params: bool = False) -> None:
    """Document what the shared machinery can answer for any operation.

    400 (credential in the URL, malformed body), 414 (URL too long), 401 (secured operations), 404 (a path parameter that
    does not match its converter or names nothing), 413 (body over the size limit), 429 (rate limits).
    """
    responses = operation.setdefault("responses", {})
    secured = operation.get("security", default_security) != []
    statuses = [400, 414, 429] + ([401] if secured else []) + ([413] if "requestBody" in operation else []) \
        + ([404] if has_path_params else [])
    for status in statuses:
        responses.setdefault(str(status), error_response_ref(status))


def flask_rule_to_openapi(rule: str) -> str:
    """`/api/v1/orders/<int:order_id>` → `/orders/{order_id}` (relative to the API prefix)."""
    import re
    relative = rule[len(API_PREFIX):] if rule.startswith(API_PREFIX) else rule
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", relative) or "/"


def operations_in_spec(spec: dict) -> set[tuple[str, str]]:
    """{(path, METHOD)} the spec documents."""
    return {(path, method.upper()) for path, item in spec["paths"].items() for method in HTTP_METHODS if method in item}


def operations_in_app(app) -> set[tuple[str, str]]:
    """{(path, METHOD)} the app routes under /api/v1 (HEAD and OPTIONS ignored)."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(API_PREFIX + "/") or rule.rule == API_PREFIX:
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                found.add((flask_rule_to_openapi(rule.rule), method))
    return found


def resolve(spec: dict, node):
    """Follow one `$ref` inside the document (for rendering)."""
    if isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#/"):
        target = spec
        for part in node["$ref"][2:].split("/"):
            target = target.get(part, {})
        return target
    return node


def operations_for_docs(spec: dict) -> list[dict]:
    """The operations as flat dicts for the reference page, grouped by tag then path."""
    import json
    rows = []
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            body = (operation.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
            rows.append({
                "tag": (operation.get("tags") or ["other"])[0], "method": method.upper(), "path": path,
                "anchor": f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", ""),
                "summary": operation.get("summary", ""), "description": operation.get("description", ""),
                "public": operation.get("security", spec.get("security")) == [],
                "parameters": [resolve(spec, parameter) for parameter in operation.get("parameters", [])],
                "body_name": body["$ref"].rsplit("/", 1)[-1] if body and "$ref" in body else None,
                "body": json.dumps(resolve(spec, body), indent=2) if body else None,
                "responses": [(status, resolve(spec, response).get("description", ""))
                              for status, response in sorted(operation.get("responses", {}).items())],
            })
    return sorted(rows, key=lambda row: (row["tag"], row["path"], row["method"]))


def schemas_for_docs(spec: dict) -> list[tuple[str, str]]:
    """(name, pretty JSON) of every component schema, for the reference page."""
    import json
    return [(name, json.dumps(schema, indent=2)) for name, schema in sorted(spec["components"]["schemas"].items())]
