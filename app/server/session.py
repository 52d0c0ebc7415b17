"""What every websocket endpoint shares: one Conversation per connection, an event pump, clean teardown.

An endpoint subclasses `WireSession` and implements `on_message` (client → conversation) and `on_event`
(conversation → client). The base class guarantees the one property the server depends on: whatever way a
connection ends (close frame, vanished client, server shutdown, a bug in a handler), the pump task stops and
the Conversation is closed, so a dead client holds no model time, memory or task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from app.config import ConversationConfig
from app.events import Event

if TYPE_CHECKING:
    from app.server.app import Server

log = logging.getLogger(__name__)


class ProtocolError(ValueError):
    """A client message we cannot use; reported to the client, after which the session continues."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


class WireSession:
    """One client connection bound to one Conversation."""

    endpoint = "base"

    def __init__(self, ws: ServerConnection, server: Server) -> None:
        self.ws = ws
        self.server = server
        self.conv: Any = None
        self._pump: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    # --- conversation lifecycle -------------------------------------------------------------------------
    def conversation_config(self, **changes: Any) -> ConversationConfig:
        return dataclasses.replace(self.server.full_config.conversation, **changes)

    async def start_conversation(self, conv_config: ConversationConfig) -> None:
        """(Re)create the conversation; the old one, if any, is closed first so it frees what it holds."""
        await self.stop_conversation()
        self.conv = self.server.assistant.conversation(conv_config)
        self._pump = asyncio.create_task(self._pump_events(self.conv), name=f"{self.endpoint}-pump")

    async def stop_conversation(self) -> None:
        pump, conv = self._pump, self.conv
        self._pump, self.conv = None, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        if conv is not None:
            try:
                await conv.close()
            except Exception:
                log.exception("closing a conversation failed")

    async def _pump_events(self, conv: Any) -> None:
        try:
            async for event in conv.events():
                await self.on_event(event)
        except ConnectionClosed:
            pass  # the receive loop sees the close too and tears the session down
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s session: event pump failed", self.endpoint)
            with contextlib.suppress(Exception):
                await self.ws.close(1011, "internal error")

    # --- the connection ---------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            try:
                await self.open()
            except Exception as exc:  # e.g. a model that cannot start a conversation: say so, then close
                log.exception("%s session: cannot start", self.endpoint)
                await self.report(
                    ProtocolError(f"cannot start a session: {type(exc).__name__}: {exc}", "server_error")
                )
                await self.ws.close(1011, "cannot start a session")
                return
            async for message in self.ws:
                await self.handle(message)
        except ConnectionClosed:
            pass
        finally:
            await self.stop_conversation()
            self.closed.set()

    async def handle(self, message: str | bytes) -> None:
        """Parse and dispatch one message; any bad input becomes an error report, never a dead session."""
        limit = self.server.config.max_message_bytes
        if len(message) > limit:
            await self.report(
                ProtocolError(
                    f"message of {len(message)} bytes exceeds the {limit}-byte limit", "message_too_large"
                )
            )
            return
        try:
            data = json.loads(message)
        except (ValueError, RecursionError) as exc:
            await self.report(ProtocolError(f"message is not valid JSON: {exc}", "invalid_json"))
            return
        if not isinstance(data, dict):
            await self.report(ProtocolError("message must be a JSON object", "invalid_json"))
            return
        try:
            await self.on_message(data)
        except ProtocolError as exc:
            await self.report(exc, data)
        except ConnectionClosed:
            raise
        except ValueError as exc:  # the conversation refused an argument: the client's mistake
            await self.report(ProtocolError(str(exc), "invalid_value"), data)
        except Exception as exc:
            # A bug or a conversation error: the client hears about it, and the session lives on.
            log.exception("%s session: handling a message failed", self.endpoint)
            await self.report(ProtocolError(f"{type(exc).__name__}: {exc}", "server_error"), data)

    async def send_json(self, data: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(data, separators=(",", ":")))

    # --- for subclasses ---------------------------------------------------------------------------------
    async def open(self) -> None:
        """Called once after the handshake (send a greeting, start the conversation...)."""

    async def on_message(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    async def on_event(self, event: Event) -> None:
        raise NotImplementedError

    async def report(self, error: ProtocolError, data: dict[str, Any] | None = None) -> None:
        """Tell the client about a bad message (protocols without an error message just log it)."""
        log.warning("%s session: %s", self.endpoint, error)
