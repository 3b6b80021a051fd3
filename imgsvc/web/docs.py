"""The API's own description: the OpenAPI document at /openapi.json and Swagger UI at /docs.

Swagger UI's files come from the flask-swagger-ui wheel and are served from here, so the
docs work on a machine with no Internet access (no CDN).
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import flask_swagger_ui
import yaml
from flask import Blueprint, Response, url_for

SWAGGER_UI_DIST = Path(flask_swagger_ui.__file__).parent / "dist"

bp = Blueprint("docs", __name__, static_folder=SWAGGER_UI_DIST, static_url_path="/docs/assets")


@cache
def openapi_spec() -> dict[str, Any]:
    """The spec as shipped in the package, parsed once per process."""
    return yaml.safe_load(files("imgsvc.web").joinpath("openapi.yaml").read_text(encoding="utf-8"))


@bp.get("/openapi.json")
def openapi_json() -> Response:
    # json.dumps, not jsonify: Flask sorts keys, and the spec reads best in its written order.
    return Response(json.dumps(openapi_spec()), mimetype="application/json")


# validatorUrl: null keeps Swagger UI from sending the spec to validator.swagger.io.
_DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>imgsvc API</title>
  <link rel="stylesheet" href="{css}">
  <link rel="icon" type="image/png" href="{icon}">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{bundle}"></script>
  <script src="{preset}"></script>
  <script>
    window.onload = function () {{
      window.ui = SwaggerUIBundle({{
        url: {spec_url},
        dom_id: "#swagger-ui",
        deepLinking: true,
        validatorUrl: null,
        presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
        layout: "StandaloneLayout"
      }});
    }};
  </script>
</body>
</html>
"""


# strict_slashes=False: /docs/ is the same page (a newcomer types either).
@bp.get("/docs", strict_slashes=False)
def docs() -> Response:
    def asset(name: str) -> str:
        return url_for("docs.static", filename=name)

    page = _DOCS_PAGE.format(
        css=asset("swagger-ui.css"),
        icon=asset("favicon-32x32.png"),
        bundle=asset("swagger-ui-bundle.js"),
        preset=asset("swagger-ui-standalone-preset.js"),
        spec_url=json.dumps(url_for("docs.openapi_json")),
    )
    return Response(page, mimetype="text/html")
