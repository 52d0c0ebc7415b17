"""The one server process: a `websockets` server whose HTTP hook serves the page and admits websockets.

Models are loaded once (the Assistant) and every connection gets its own cheap Conversation from it.
Admission order: one Host header → allowed Host → route → origin → token (HTTP 400/421/404/403/401, before
any session exists; app/server/http.py) → slots (the websocket is accepted and closed with code 1013 and a
reason, so that clients, including the openai SDK, can show why): `max_sessions` live conversations,
`max_sessions_per_client` per client address, `max_pending` connections still without a conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from app.batch_lane import lane_stats
from app.config import Config
from app.server import http, redact
from app.server.realtime import RealtimeSession
from app.server.session import SessionState, WireSession
from app.server.twilio import TwilioSession

log = logging.getLogger(__name__)
SESSION_CLASSES: dict[str, type[WireSession]] = {http.REALTIME: RealtimeSession, http.TWILIO: TwilioSession}
TRY_AGAIN_LATER = 1013


class InsecureBindError(ValueError):
    """Binding beyond loopback without a token would hand the assistant to the whole network."""


def check_bind(config: Config) -> None:
    if not http.is_loopback(config.server.host) and not config.server.token:
        raise InsecureBindError(
            f"refusing to listen on {config.server.host} without a token: set one with --token or "
            "SPECVOICE_SERVER_TOKEN (clients send it as 'Authorization: Bearer' or ?token=)"
        )


_frozen_by = 0  # servers running in this process (tests run several, nested)


def _freeze_heap() -> None:
    """Models and libraries are loaded: keep them out of every later collection, so the collection after
    each session costs milliseconds, not the second a full pass over torch and transformers takes."""
    global _frozen_by
    if _frozen_by == 0:
        gc.collect()
        gc.freeze()
    _frozen_by += 1


def _thaw_heap() -> None:
    """Only the last server to close unfreezes: one closing must not make every other one's collections slow."""
    global _frozen_by
    _frozen_by -= 1
    if _frozen_by == 0:
        gc.unfreeze()


class Server:
    """Serves every way in over one port. `assistant` must have `.conversation(ConversationConfig)`."""

    def __init__(self, assistant: Any, config: Config) -> None:
        check_bind(config)
        self.assistant = assistant
        self.full_config = config
        self.config = config.server
        self.sessions: set[WireSession] = set()
        self.refused = 0
        self.total_sessions = 0
        self._ws_server: WsServer | None = None
        redact.add_secret(config.server.token)

    @property
    def port(self) -> int:
        assert self._ws_server is not None, "server not started"
        return self._ws_server.sockets[0].getsockname()[1]

    def health(self) -> dict[str, object]:
        rss_mb = None
        try:
            import psutil

            rss_mb = round(psutil.Process(os.getpid()).memory_info().rss / 2**20, 1)
        except Exception:
            pass
        return {
            "status": "ok",
            "sessions": self.live_sessions(),
            "connections": len(self.sessions),
            "max_sessions": self.config.max_sessions,
            "total_sessions": self.total_sessions,
            "refused": self.refused,
            "rss_mb": rss_mb,
            # Per model lane: calls, queue wait, busy seconds (which stage queues under load; `bench serve`).
            "lanes": lane_stats(getattr(self.assistant, "lanes", None)),
        }

    def live_sessions(self) -> int:
        return sum(1 for s in self.sessions if s.state is SessionState.LIVE)

    def refusal(self, session: WireSession, starting: bool) -> str | None:
        """Why `session` may not go on (None: it may). `starting`: it is about to create its conversation."""
        cfg = self.config
        others = [s for s in self.sessions if s is not session and s.state is not SessionState.CLOSED]
        if starting and sum(1 for s in others if s.state is SessionState.LIVE) >= cfg.max_sessions:
            return f"server busy: {cfg.max_sessions} sessions already open (max_sessions)"
        address = session.client_address
        if (
            not starting
            and sum(1 for s in others if s.client_address == address) >= cfg.max_sessions_per_client
        ):
            return (
                f"too many sessions from {address}: {cfg.max_sessions_per_client} already open "
                "(max_sessions_per_client)"
            )
        if not starting and sum(1 for s in others if s.state is SessionState.CONNECTED) >= cfg.max_pending:
            return f"server busy: {cfg.max_pending} connections still starting (max_pending)"
        return None

    async def refuse(self, session: WireSession, reason: str) -> None:
        """Accepted, told why, closed with 1013 (try again later)."""
        self.refused += 1
        log.warning("refused a %s session from %s: %s", session.endpoint, session.client_address, reason)
        if session.endpoint == http.REALTIME:
            with contextlib.suppress(Exception):
                await session.emit(
                    "error",
                    error={
                        "type": "server_error",
                        "code": reason.rsplit("(", 1)[-1].rstrip(")"),
                        "message": reason,
                        "param": None,
                        "event_id": None,
                    },
                )
        await session.close(TRY_AGAIN_LATER, reason[:120])

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        admission = http.admit(self.config, request, self.health)
        if admission.response is not None:
            return admission.response
        connection.specvoice_endpoint = admission.endpoint  # type: ignore[attr-defined]
        return None

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, offered: Any) -> Any:
        return http.select_subprotocol(list(offered))

    async def _handle(self, connection: ServerConnection) -> None:
        endpoint = getattr(connection, "specvoice_endpoint", None)
        if endpoint is None:  # cannot happen: the HTTP hook refuses unknown paths
            await connection.close(1008, "unknown endpoint")
            return
        session = SESSION_CLASSES[endpoint](connection, self)
        reason = self.refusal(session, starting=False) or (
            None if session.needs_start else self.refusal(session, starting=True)
        )
        if reason is not None:
            await self.refuse(session, reason)
            return
        self.sessions.add(session)
        self.total_sessions += 1
        try:
            await session.run()
        except Exception:
            log.exception("%s session crashed", endpoint)
        finally:
            self.sessions.discard(session)
            del session
            # Anything a closed session left in a reference cycle (a KV cache is tens of MB) is freed now
            # rather than many sessions later; cheap because start() froze the long-lived model objects.
            gc.collect()

    async def start(self) -> None:
        redact.install()
        limit = self.config.max_message_bytes
        _freeze_heap()
        self._ws_server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            # Frames a little over the limit still arrive, so the session can answer "too large" and go on;
            # far larger ones close the connection (1009) before they cost memory.
            max_size=2 * limit + 65536,
            max_queue=16,
            # Keepalive: a client that does not answer a ping within send_timeout_s is disconnected, like one
            # that does not read. A flood client is caught by it too: its pong waits behind its own unread,
            # throttled audio (app/server/session.py).
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.send_timeout_s,
            close_timeout=self.config.send_timeout_s,
            compression=None,
            server_header="specvoice",
        )
        log.info("listening on ws://%s:%d", self.config.host, self.port)

    async def close(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
            self._ws_server = None
            _thaw_heap()

    async def serve_forever(self) -> None:
        assert self._ws_server is not None
        await self._ws_server.serve_forever()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def wait_for_sessions_to_end(server: Server, timeout: float = 10.0) -> bool:
    """For shutdown and tests: True once no session is open."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while server.sessions and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return not server.sessions
