"""The daemon's read-only page: ``/`` (the live matrix), its script and stylesheet, and
``/api/v1/edges`` (the same data as JSON, for scripts).

Stage: output edge (served by the daemon's HTTP server). Input: a request path and the live view
(:class:`auditor.sinks.live.LiveSink`). Output: a :class:`Response` or ``None`` for paths this module does
not serve.

Security: the page is a static shell; data reaches it only as JSON that the script puts into the DOM with
``textContent`` (never as markup), so pod names, labels and DNS names from the cluster are inert. Every
response carries a strict Content-Security-Policy (scripts and styles from this server only, fetches to
this server only, nothing else), ``nosniff`` and ``no-store``; the server makes no external request.

Error policy: never raises for a path; unknown paths are left to the caller (404).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from auditor.render_html import CSS

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = SECURITY_HEADERS


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


_PAGE: Final = _asset("index.html")
_SCRIPT: Final = _asset("app.js")
_STYLE: Final = (CSS + _asset("app.css").decode()).encode()


API_PATH: Final = "/api/v1/edges"
PATHS: Final = ("/", "/index.html", "/ui/app.js", "/ui/app.css", API_PATH)
"""Every path this module serves."""


def route(path: str, snapshot: Callable[[], dict[str, Any]]) -> Response | None:
    """The response for ``path`` (query string already removed), or ``None`` if it is not ours."""
    if path in ("/", "/index.html"):
        return Response(200, "text/html; charset=utf-8", _PAGE)
    if path == "/ui/app.js":
        return Response(200, "text/javascript; charset=utf-8", _SCRIPT)
    if path == "/ui/app.css":
        return Response(200, "text/css; charset=utf-8", _STYLE)
    if path == API_PATH:
        body = json.dumps(snapshot(), separators=(",", ":")).encode()
        return Response(200, "application/json", body)
    return None
