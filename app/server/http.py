"""The HTTP side of the one server process: routing, the Host, token and origin checks, static files.

Everything here runs in `websockets`' `process_request` hook, before a websocket is accepted, so a refused
client never costs a session. Plain GET requests (no `Upgrade: websocket`) get the browser page.

Admission order: one Host header (400) → an allowed Host (421: DNS rebinding) → route (404) → origin (403)
→ token (401). The Host check is what stops a page on a rebinding domain (`evil.example` resolving to
127.0.0.1) from driving a loopback server: its requests carry `Host: evil.example`.
"""

from __future__ import annotations

import email.utils
import hmac
import ipaddress
import json
import mimetypes
from collections.abc import Callable
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
    "/style.css": "style.css",
}


def endpoint_for(path: str) -> str | None:
    """`.../realtime` → Realtime (so /v1/realtime and /realtime both work); `/twilio`, `/media-stream` → Twilio."""
    path = path.rstrip("/")
    if path.endswith("/realtime"):
        return REALTIME
    if path in ("/twilio", "/media-stream", "/telephony"):
        return TWILIO
    return None


WILDCARD_BINDS = ("0.0.0.0", "::", "")
# The page may only load its own scripts and talk to its own server; no framing (clickjacking), no
# Referer (a ?token= in the page URL must not leak to other sites).
PAGE_SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "media-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)


class BadRequest(ValueError):
    """A request we refuse to interpret (e.g. two Host headers): answered 400, never a traceback."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower().rstrip(".")
    if host in ("localhost", "ip6-localhost", "ip6-loopback") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or "0.0.0.0"-like wildcard: reachable from outside


def split_host(host_header: str) -> tuple[str, str | None]:
    """`name:port`, `[v6]:port`, `v6`, `name` → (lowercase host without brackets, port or None)."""
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        rest = value[end + 1 :]
        return value[1:end], rest[1:] if rest.startswith(":") else None
    if value.count(":") == 1:
        name, _, port = value.partition(":")
        return name, port
    return value, None  # a bare name, or a bare IPv6 address


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def host_allowed(config: ServerConfig, host_header: str | None) -> bool:
    """Is a request's `Host` one this server answers to?

    Loopback names and addresses always are; so is any entry of `server.allowed_hosts` (a name, or
    `name:port`; `*` allows all) and the address the server is bound to. On a wildcard bind (0.0.0.0)
    with a token, any IP literal is accepted too: DNS rebinding needs a domain name, and a client that
    types an address reaches us on purpose. A missing Host (HTTP/1.0) is refused."""
    if not host_header:
        return False
    name, port = split_host(host_header)
    if not name:
        return False
    if is_loopback(name):
        return True
    for entry in config.allowed_hosts:
        entry = entry.strip().lower()
        if entry == "*":
            return True
        entry_name, entry_port = split_host(entry)
        if entry_name == name and (entry_port is None or entry_port == port):
            return True
    bind = config.host.strip("[]").lower()
    if bind not in WILDCARD_BINDS and name == bind:
        return True
    return bind in WILDCARD_BINDS and bool(config.token) and _is_ip(name)


def bearer_ok(config: ServerConfig, authorization_header: str | None) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` value; True when no token is configured."""
    if not config.token:
        return True
    if not authorization_header or not authorization_header[:7].lower() == "bearer ":
        return False
    return hmac.compare_digest(authorization_header[7:].strip().encode(), config.token.encode())


def single_header(request: Request, name: str) -> str | None:
    """A header that must appear at most once (two Hosts is a smuggling attempt or a broken client)."""
    values = request.headers.get_all(name)
    if len(values) > 1:
        raise BadRequest(f"more than one {name} header")
    return values[0] if values else None


def token_required(config: ServerConfig) -> bool:
    return bool(config.token) or not is_loopback(config.host)


def presented_token(request: Request) -> str | None:
    """The token from `Authorization: Bearer`, `?token=` or an `openai-insecure-api-key.` subprotocol."""
    auth = single_header(request, "Authorization") or ""
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
    origin = single_header(request, "Origin")
    if origin is None:
        return True
    allowed = config.allowed_origins
    if "*" in allowed or origin in allowed:
        return True
    host = single_header(request, "Host") or ""
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host


def make_response(
    status: int, reason: str, body: bytes, content_type: str, extra: tuple[tuple[str, str], ...] = ()
) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *extra,
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
    return make_response(200, "OK", body, content_type, PAGE_SECURITY_HEADERS)


def is_websocket_upgrade(request: Request) -> bool:
    return any("websocket" in value.lower() for value in request.headers.get_all("Upgrade"))


@dataclass
class Admission:
    """What the HTTP hook decided for one request: a response to send, or the endpoint to run."""

    response: Response | None = None
    endpoint: str | None = None


def admit(
    config: ServerConfig, request: Request, health: dict[str, object] | Callable[[], dict[str, object]]
) -> Admission:
    """Decide one request (see the module docstring for the order); never raises for a client's mistake."""
    try:
        return _admit(config, request, health)
    except BadRequest as exc:
        return Admission(text_response(400, "Bad Request", str(exc)))


def _admit(
    config: ServerConfig, request: Request, health: dict[str, object] | Callable[[], dict[str, object]]
) -> Admission:
    path = urlsplit(request.path).path
    if not host_allowed(config, single_header(request, "Host")):
        return Admission(
            text_response(
                421,
                "Misdirected Request",
                "this server does not answer to that Host name (add it to server.allowed_hosts / --allow-host)",
            )
        )
    if not is_websocket_upgrade(request):
        if single_header(request, "Origin") is not None and not origin_ok(config, request):
            return Admission(text_response(403, "Forbidden", "origin not allowed"))
        if path == "/healthz":
            data = health() if callable(health) else health
            if not token_ok(config, request):  # without the token: alive, and nothing more
                data = {"status": data.get("status", "ok")}
            return Admission(json_response(data))
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
