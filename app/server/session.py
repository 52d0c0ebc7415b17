"""What every websocket endpoint shares: one Conversation per connection, an event pump, clean teardown.

An endpoint subclasses `WireSession` and implements `on_message` (client → conversation) and `on_event`
(conversation → client). The base class guarantees what the server depends on:

* whatever way a connection ends (close frame, vanished client, server shutdown, a bug in a handler), the
  pump task stops and the Conversation is closed, so a dead client holds no model time, memory or task;
* a connection that sends nothing and has nothing to receive for `idle_timeout_s` is closed (1000, with a
  reason); one that must say something first (a phone stream's `start`) gets `start_timeout_s`;
* a client that does not read what we send for `send_timeout_s` is disconnected (outgoing data is bounded);
* bad messages get errors, but only `max_errors` of them in a burst (refilled over a minute): then the
  connection is closed (1008), and only the first few are logged;
* audio runs at most `max_audio_speed` × real time after an initial burst (the receive loop waits, and TCP
  pushes back on the client), and is handed to the conversation in short slices so that VAD and
  resampling never hold the event loop for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from app.config import ConversationConfig
from app.events import Event
from app.reply_stream import lane_tenant

if TYPE_CHECKING:
    from app.server.app import Server

log = logging.getLogger(__name__)
POLICY_VIOLATION = 1008
AUDIO_SLICE_S = 0.1  # audio handed to the conversation per step (VAD + resampling of 100 ms: well under 1 ms)
NO_PARTIAL_DECODES_MS = 3_600_000  # decode_interval_ms of a throttled session: only end-of-turn decodes
LOGGED_ERRORS = 5  # per connection; the rest are counted and summed up once at the end


class ProtocolError(ValueError):
    """A client message we cannot use; reported to the client, after which the session continues."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


class SessionState(enum.Enum):
    """CONNECTED (handshake done, no conversation yet) → LIVE (a conversation) → CLOSED."""

    CONNECTED = "connected"
    LIVE = "live"
    CLOSED = "closed"


def reject_constant(name: str) -> float:
    """json.loads hook: NaN and ±Infinity are not JSON, and no setting or mark may be one."""
    raise ValueError(f"{name} is not a valid JSON number")


def loads(message: str | bytes) -> Any:
    return json.loads(message, parse_constant=reject_constant)


def finite_number(value: Any, where: str, low: float, high: float) -> float:
    """A JSON number within [low, high] (not a bool, not NaN/Infinity), else a ProtocolError naming `where`."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ProtocolError(f"{where} must be a number between {low:g} and {high:g}", "invalid_value", where)
    return float(value)


class AudioPacer:
    """A token bucket over audio seconds: `burst_s` ahead of real time at once, then `speed` × real time."""

    def __init__(self, speed: float, burst_s: float) -> None:
        self.speed, self.burst_s = speed, burst_s
        self.credit = burst_s
        self.stamp = time.monotonic()

    def delay_for(self, seconds: float) -> float:
        """Take `seconds` of audio; returns how long to wait before handling it (0 when within the budget)."""
        now = time.monotonic()
        self.credit = min(self.burst_s, self.credit + (now - self.stamp) * self.speed)
        self.stamp = now
        self.credit -= seconds
        return 0.0 if self.credit >= 0 else -self.credit / self.speed


class WireSession:
    """One client connection bound to (at most) one Conversation."""

    endpoint = "base"
    needs_start = False  # the protocol opens with a message that creates the conversation (Twilio `start`)

    def __init__(self, ws: ServerConnection, server: Server) -> None:
        self.ws = ws
        self.server = server
        self.conv: Any = None
        self.state = SessionState.CONNECTED
        self._pump: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.connected_at = self.last_activity = time.monotonic()
        self.errors = 0
        self.idle_timeout_s = server.config.idle_timeout_s
        cfg = server.config
        self.pacer = AudioPacer(cfg.max_audio_speed, cfg.audio_burst_s)
        # max_errors bad messages at once, refilled over a minute: a flood is cut off, a long call that
        # now and then sends something we do not support is not.
        self.error_budget = AudioPacer(cfg.max_errors / 60.0, float(cfg.max_errors))
        self.over_error_budget = False
        self._send_lock = asyncio.Lock()
        self._slowed_conv: Any = None  # the conversation _no_live_speaker_work has slowed down

    @property
    def client_address(self) -> str | None:
        remote = getattr(self.ws, "remote_address", None)
        return remote[0] if remote else None

    # --- conversation lifecycle -------------------------------------------------------------------------
    def conversation_config(self, **changes: Any) -> ConversationConfig:
        """The server's conversation settings. Its `llm.max_reply_tokens` is passed on explicitly: the
        conversation would otherwise fall back to the assistant's own config, which may not be the server's."""
        full = self.server.full_config
        if not full.conversation.max_reply_tokens:
            changes.setdefault("max_reply_tokens", full.llm.max_reply_tokens)
        return dataclasses.replace(full.conversation, **changes)

    async def start_conversation(self, conv_config: ConversationConfig) -> None:
        """(Re)create the conversation. The new one is built first: if that fails (a bad setting), the
        session keeps the one it had, untouched. Then the old one is closed so it frees what it holds."""
        conv = self.server.assistant.conversation(conv_config)
        await self.stop_conversation()
        self.conv = conv
        self.state = SessionState.LIVE
        self._pump = asyncio.create_task(self._pump_events(conv), name=f"{self.endpoint}-pump")

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
                self.touch()
                await self.on_event(event)
        except ConnectionClosed:
            pass  # the receive loop sees the close too and tears the session down
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s session: event pump failed", self.endpoint)
            with contextlib.suppress(Exception):
                await self.ws.close(1011, "internal error")

    async def push_audio(self, pcm: np.ndarray, rate: int) -> None:
        """Hand audio to the conversation at most `max_audio_speed` × real time, 100 ms at a time.

        Paced per slice, not per message: a throttled client's 25 s append reaches VAD and ASR as a steady
        2× stream, not all at once after a long wait (25 s of speech in a second: several end-of-turn
        decodes and replies queued on the model lanes at once)."""
        step = max(1, int(rate * AUDIO_SLICE_S))
        for start in range(0, pcm.size, step):
            if self.conv is None:
                return
            piece = pcm[start : start + step]
            delay = self.pacer.delay_for(piece.size / rate)
            if delay > 0:  # throttle: this client's next messages wait in its TCP buffers
                self._no_live_speaker_work()
                await self._throttle(delay)
            elif start:
                await asyncio.sleep(0)  # let every other session run between slices
            await self.conv.push_audio(piece, rate)

    def _no_live_speaker_work(self) -> None:
        """A client throttled for running ahead of real time is a faster-than-real-time source, not a person
        waiting for an answer: its conversation stops the work that only buys a live speaker latency, which
        it would otherwise do at `max_audio_speed` × the rate of one, on the lanes everyone shares: no
        replies prepared speculatively in its pauses, and no partial re-decodes of its utterance while it
        is being spoken (nor the LLM prefill they feed). Its turns are still transcribed (once, at their
        end) and answered."""
        conv = self.conv
        if conv is None or conv is self._slowed_conv:
            return
        self._slowed_conv = conv
        try:
            conv.update(preemptive=False, decode_interval_ms=NO_PARTIAL_DECODES_MS)
        except (ValueError, RuntimeError):  # a conversation closing under us: nothing to slow down
            log.debug("could not slow a throttled conversation", exc_info=True)

    async def _throttle(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self.ws.wait_closed(), delay)
        except asyncio.TimeoutError:
            return
        # It went away while throttled: drop what it still had queued, end the session now.
        raise ConnectionClosed(None, None)

    # --- the connection ---------------------------------------------------------------------------------
    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def deadline(self) -> tuple[float, str]:
        """When this connection will be closed for silence, and the reason it will be given."""
        cfg = self.server.config
        if self.needs_start and self.state is SessionState.CONNECTED:
            return self.connected_at + cfg.start_timeout_s, f"no start event within {cfg.start_timeout_s:g} s"
        if self.busy():  # the client is waiting for us (a reply being prepared): not idle
            self.touch()
        return self.last_activity + self.idle_timeout_s, f"idle for {self.idle_timeout_s:g} s"

    def busy(self) -> bool:
        """Is the server working on something this client waits for? (Then silence is not idleness.)"""
        return False

    async def _next_message(self) -> bytes | None:
        """The next message (undecoded: invalid UTF-8 is reported, not a 1007 close), or None once the
        connection was closed for inactivity."""
        while True:
            at, reason = self.deadline()
            remaining = at - time.monotonic()
            if remaining <= 0:
                log.info("%s session from %s closed: %s", self.endpoint, self.client_address, reason)
                await self.close(1000, reason)
                return None
            try:  # (wait_for, not asyncio.timeout: Python 3.10; cancelling recv loses nothing)
                return await asyncio.wait_for(self.ws.recv(decode=False), remaining)
            except asyncio.TimeoutError:
                continue  # re-check: activity (a reply being sent) may have moved the deadline

    async def close(self, code: int, reason: str, discard_incoming: bool = False) -> None:
        """Close with a reason; a client that does not read gets the transport cut after send_timeout_s.

        `discard_incoming` (only from the receive loop, which is then not reading): what the client still
        sends meanwhile is read and dropped, as its answering close frame may be queued behind a flood of
        messages that would otherwise sit unread (the read side pauses when full) until the timeout."""
        discard = asyncio.create_task(self._discard_incoming()) if discard_incoming else None
        try:
            await asyncio.wait_for(self.ws.close(code, reason), self.server.config.send_timeout_s)
        except (asyncio.TimeoutError, ConnectionClosed, OSError):
            self.ws.transport.abort()
        finally:
            if discard is not None:
                discard.cancel()

    async def _discard_incoming(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                await self.ws.recv(decode=False)

    async def run(self) -> None:
        lane_tenant.set(object())  # every model call this connection causes is scheduled as its own (fairness)
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
            while (message := await self._next_message()) is not None:
                self.touch()
                await self.handle(message)
                if self.over_error_budget:
                    reason = f"too many bad messages ({self.errors})"
                    log.warning("%s session from %s closed: %s", self.endpoint, self.client_address, reason)
                    await self.close(POLICY_VIOLATION, reason, discard_incoming=True)
                    break
        except ConnectionClosed:
            pass
        finally:
            self.state = SessionState.CLOSED
            await self.stop_conversation()
            if self.errors > LOGGED_ERRORS:
                log.warning(
                    "%s session from %s: %d bad messages in all (the first %d logged)",
                    self.endpoint,
                    self.client_address,
                    self.errors,
                    LOGGED_ERRORS,
                )
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
            data = loads(message)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
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
        except (ValueError, TypeError) as exc:  # the conversation refused an argument: the client's mistake
            await self.report(ProtocolError(str(exc), "invalid_value"), data)
        except Exception as exc:
            # A bug or a conversation error: the client hears about it, and the session lives on.
            log.exception("%s session: handling a message failed", self.endpoint)
            await self.report(ProtocolError(f"{type(exc).__name__}: {exc}", "server_error"), data)

    async def send_json(self, data: dict[str, Any]) -> None:
        """Send one event. Bounded: a client that has not read for send_timeout_s is disconnected (our
        side would otherwise queue reply audio for it without end)."""
        text = json.dumps(data, separators=(",", ":"))
        try:
            async with self._send_lock:
                await asyncio.wait_for(self.ws.send(text), self.server.config.send_timeout_s)
        except asyncio.TimeoutError:
            log.warning(
                "%s session from %s: client not reading; disconnected", self.endpoint, self.client_address
            )
            self.ws.transport.abort()
            raise ConnectionClosed(None, None) from None

    def count_error(self, error: ProtocolError) -> bool:
        """Count a bad message; True while it should still be logged (the log stays bounded)."""
        self.errors += 1
        if self.error_budget.delay_for(1.0) > 0:
            self.over_error_budget = True
        return self.errors <= LOGGED_ERRORS

    # --- for subclasses ---------------------------------------------------------------------------------
    async def open(self) -> None:
        """Called once after the handshake (send a greeting, start the conversation...)."""

    async def on_message(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    async def on_event(self, event: Event) -> None:
        raise NotImplementedError

    async def report(self, error: ProtocolError, data: dict[str, Any] | None = None) -> None:
        """Tell the client about a bad message (protocols without an error message just log it)."""
        if self.count_error(error):
            log.warning("%s session: %s", self.endpoint, error)
