"""The HTTP side of the one server process: routing, the token check, the origin check, static files.

Everything here runs in `websockets`' `process_request` hook, before a websocket is accepted, so a refused
client never costs a session. Plain GET requests (no `Upgrade: websocket`) get the browser page.
"""

from __future__ import annotations

import email.utils
import hmac
import ipaddress
import json
import mimetypes
from dataclasses import dataclass
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from app.config import ServerConfig

REALTIME = "realtime"
TWILIO = "twilio"
# Browsers cannot set an Authorization header on a websocket; the Realtime convention is to smuggle the
# key in a subprotocol. We accept it as a token too (the page uses ?token= instead).
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
STATIC_FILES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/app.js": "app.js",
    "/worklet.js": "worklet.js",
}


def endpoint_for(path: str) -> str | None:
    """`.../realtime` → Realtime (so /v1/realtime and /realtime both work); `/twilio`, `/media-stream` → Twilio."""
    path = path.rstrip("/")
    if path.endswith("/realtime"):
        return REALTIME
    if path in ("/twilio", "/media-stream", "/telephony"):
        return TWILIO
    return None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or "0.0.0.0"-like wildcard: reachable from outside


def token_required(config: ServerConfig) -> bool:
    return bool(config.token) or not is_loopback(config.host)


def presented_token(request: Request) -> str | None:
    """The token from `Authorization: Bearer`, `?token=` or an `openai-insecure-api-key.` subprotocol."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    query = parse_qs(urlsplit(request.path).query)
    if query.get("token"):
        return query["token"][0]
    for header in request.headers.get_all("Sec-WebSocket-Protocol"):
        for proto in header.split(","):
            proto = proto.strip()
            if proto.startswith(KEY_SUBPROTOCOL_PREFIX):
                return proto[len(KEY_SUBPROTOCOL_PREFIX) :]
    return None


def token_ok(config: ServerConfig, request: Request) -> bool:
    if not token_required(config):
        return True
    given = presented_token(request)
    if not config.token or given is None:
        return False
    return hmac.compare_digest(given.encode(), config.token.encode())


def origin_ok(config: ServerConfig, request: Request) -> bool:
    """Browsers always send Origin; other clients do not. A page from another site must not reach us
    (cross-site websocket hijacking works even on loopback), so a browser origin must be ours or listed."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    allowed = config.allowed_origins
    if "*" in allowed or origin in allowed:
        return True
    host = request.headers.get("Host", "")
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host


def make_response(status: int, reason: str, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    return Response(status, reason, headers, body)


def text_response(status: int, reason: str, text: str) -> Response:
    return make_response(status, reason, (text.rstrip("\n") + "\n").encode(), "text/plain; charset=utf-8")


def json_response(data: object) -> Response:
    return make_response(200, "OK", json.dumps(data).encode(), "application/json")


def static_response(path: str) -> Response | None:
    name = STATIC_FILES.get(path)
    if name is None:
        return None
    body = resources.files("app").joinpath("web").joinpath(name).read_bytes()  # package data of `app`
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    return make_response(200, "OK", body, content_type)


def is_websocket_upgrade(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


@dataclass
class Admission:
    """What the HTTP hook decided for one request: a response to send, or the endpoint to run."""

    response: Response | None = None
    endpoint: str | None = None


def admit(config: ServerConfig, request: Request, health: dict[str, object]) -> Admission:
    path = urlsplit(request.path).path
    if not is_websocket_upgrade(request):
        if request.headers.get("Origin") is not None and not origin_ok(config, request):
            return Admission(text_response(403, "Forbidden", "origin not allowed"))
        if path == "/healthz":
            return Admission(json_response(health))
        page = static_response(path)
        if page is not None:
            return Admission(page)
        return Admission(text_response(404, "Not Found", f"no page at {path}"))
    endpoint = endpoint_for(path)
    if endpoint is None:
        return Admission(
            text_response(404, "Not Found", f"no websocket endpoint at {path}; use /v1/realtime or /twilio")
        )
    if not origin_ok(config, request):
        return Admission(text_response(403, "Forbidden", "origin not allowed (see server.allowed_origins)"))
    if not token_ok(config, request):
        return Admission(
            text_response(401, "Unauthorized", "a valid token is required (Authorization: Bearer or ?token=)")
        )
    return Admission(endpoint=endpoint)


def select_subprotocol(offered: list[str]) -> str | None:
    """Pick `realtime` only when the client offers it: the Python SDK offers none and would get HTTP 400
    if we insisted, while browsers fail the handshake if we answer without one of theirs."""
    return REALTIME if REALTIME in offered else None
