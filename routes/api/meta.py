"""API: the OpenAPI 3.1 document and a readable reference page, both public and served by the app."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template

from utils import openapi
from utils.api_auth import public

bp = Blueprint("meta", __name__)

OPENAPI_PATHS = {
    "/openapi.json": {"get": {
        "summary": "This OpenAPI 3.1 document",
        "operationId": "getOpenApi",
        "security": [],
        "responses": {"200": openapi.json_response("The OpenAPI document.", {"type": "object"})},
    }},
    "/docs": {"get": {
        "summary": "API reference page (HTML)",
        "operationId": "getApiDocs",
        "security": [],
        "responses": {"200": {"description": "The API reference, rendered from this document.",
                              "content": {"text/html": {"schema": {"type": "string"}}}}},
    }},
}


def api_spec() -> dict:
    """The merged spec, built once per app (modules are fixed once the app is built)."""
    spec = current_app.extensions.get("tw_openapi")
    if spec is None:
        from routes.api import SUBMODULES
        spec = current_app.extensions.setdefault("tw_openapi", openapi.build_spec(SUBMODULES))
    return spec


@bp.get("/openapi.json")
@public
def openapi_document():
    return jsonify(api_spec())


@bp.get("/docs")
@public
def api_docs():
    spec = api_spec()
    return render_template("api_docs.html", spec=spec, operations=openapi.operations_for_docs(spec),
                           schemas=openapi.schemas_for_docs(spec))
