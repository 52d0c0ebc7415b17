"""The one server process: a `websockets` server whose HTTP hook serves the page and admits websockets.

Models are loaded once (the Assistant) and every connection gets its own cheap Conversation from it.
Admission order: route → origin → token (HTTP 404/403/401, before any session exists) → session limit (the
websocket is accepted and closed with code 1013 and a reason, so that clients, including the openai SDK,
can show why).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from app.config import Config
from app.server import http
from app.server.realtime import RealtimeSession
from app.server.session import WireSession
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
            "sessions": len(self.sessions),
            "max_sessions": self.config.max_sessions,
            "total_sessions": self.total_sessions,
            "refused": self.refused,
            "rss_mb": rss_mb,
        }

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        admission = http.admit(self.config, request, self.health())
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
        if len(self.sessions) >= self.config.max_sessions:
            self.refused += 1
            reason = f"server busy: {self.config.max_sessions} sessions already open (max_sessions)"
            log.warning("refused a %s session: %s", endpoint, reason)
            if endpoint == http.REALTIME:
                await RealtimeSession(connection, self).emit(
                    "error",
                    error={
                        "type": "server_error",
                        "code": "max_sessions",
                        "message": reason,
                        "param": None,
                        "event_id": None,
                    },
                )
            await connection.close(TRY_AGAIN_LATER, reason)
            return
        session = SESSION_CLASSES[endpoint](connection, self)
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
        limit = self.config.max_message_bytes
        gc.collect()
        gc.freeze()  # models and libraries are loaded: keep them out of every later collection (~4 ms, not ~300)
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
            compression=None,
            server_header="specvoice",
        )
        log.info("listening on ws://%s:%d", self.config.host, self.port)

    async def close(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
            self._ws_server = None
            gc.unfreeze()

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
