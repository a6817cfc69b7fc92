"""The API document and its browsable page: GET /api/v1/openapi.json (built once per app by web/openapi.py) and
Swagger UI at /api/v1/docs/, served from the files the flask-swagger-ui package ships (no CDN, and no call to
swagger.io's validator), whose Authorize button takes a bearer token. Both are open (web/auth.OPEN): they show the
API's shape, never its data."""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify
from flask_swagger_ui import get_swaggerui_blueprint

from web.openapi import build_document, documented

bp = Blueprint("docs", __name__, url_prefix="/api/v1")
DOCUMENT_URL = "/api/v1/openapi.json"
PAGE_URL = "/api/v1/docs"
PAGE_CONFIG = {
    "app_name": "imgq API",
    "validatorUrl": None,  # Swagger UI would otherwise send the document to validator.swagger.io for its badge
    "displayOperationId": True,
    "tryItOutEnabled": False,
    "oauth2RedirectUrl": f"{PAGE_URL}/oauth2-redirect.html",  # unused (bearer tokens only); relative, not this host's
}


@bp.get("/openapi.json")
@documented("This document (OpenAPI 3.1)", responses={200: {"application/json": {"type": "object"}}},
            description="Generated from the models that validate requests and build answers; open (no token).")
def openapi():
    document = current_app.extensions.get("imgq_openapi")
    if document is None:
        document = current_app.extensions["imgq_openapi"] = build_document(current_app)
    return jsonify(document)


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_blueprint(get_swaggerui_blueprint(PAGE_URL, DOCUMENT_URL, config=dict(PAGE_CONFIG)))
