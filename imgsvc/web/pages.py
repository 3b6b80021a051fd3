"""The human side of the web room: one page at ``/`` that uploads images and shows their descriptions.

The page is plain HTML plus a small script that talks only to the public API, so it needs no
build step and no CDN, and it can do nothing a ``curl`` user could not.
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template

from imgsvc.config import app_settings
from imgsvc.storage.uploads import human_size

# Flask's app-level /static route would shadow a blueprint's, so the page's assets live under /assets.
bp = Blueprint(
    "pages", __name__, template_folder="templates", static_folder="static", static_url_path="/assets"
)

# Everything comes from this origin; blob: is the local preview of the picked file.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@bp.get("/")
def index() -> Response:
    settings = app_settings()
    limit = settings.max_file_size
    page = render_template(
        "index.html",
        max_file_size=limit,
        max_file_size_text=human_size(limit),
        api_keys_required=bool(settings.api_keys),
    )
    return Response(page, mimetype="text/html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
