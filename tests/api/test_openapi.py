"""The OpenAPI 3.1 document covers exactly the routes under /api/v1, and the reference page renders it."""
from __future__ import annotations

from utils import openapi


def test_spec_paths_and_methods_match_the_url_map_both_ways(app, client):
    spec = client.get("/api/v1/openapi.json").get_json()
    documented, routed = openapi.operations_in_spec(spec), openapi.operations_in_app(app)
    assert routed - documented == set(), f"routes missing from the spec: {sorted(routed - documented)}"
    assert documented - routed == set(), f"spec operations with no route: {sorted(documented - routed)}"
    assert ("/api-keys/{key_id}/rotate", "POST") in documented


def test_spec_is_openapi_3_1_with_shared_error_schema_and_bearer_auth(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1") and spec["servers"] == [{"url": "/api/v1"}]
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        **spec["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]
    assert spec["security"] == [{"bearerAuth": []}]


def test_every_secured_operation_documents_401_and_429(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in openapi.HTTP_METHODS:
                continue
            assert "429" in operation["responses"], (path, method)
            if operation.get("security", spec["security"]) != []:
                assert "401" in operation["responses"], (path, method)


def test_every_ref_in_the_spec_resolves(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(spec)
    for target in refs:
        assert openapi.resolve(spec, {"$ref": target}), target


def test_openapi_json_and_docs_are_public_and_the_docs_page_lists_operations(client):
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "POST /api-keys/{key_id}/rotate" in html and "Authorization: Bearer" in html
    assert 'id="schema-ApiKey"' in html and "expires_in_days" in html
    assert "cdn" not in html.lower() and "<script>" not in html


def test_rule_conversion_handles_converters():
    assert openapi.flask_rule_to_openapi("/api/v1/orders/<int:order_id>") == "/orders/{order_id}"
    assert openapi.flask_rule_to_openapi("/api/v1/exports/share/<token>") == "/exports/share/{token}"
