"""The telephony endpoint, speaking Twilio's Media Streams protocol (bidirectional stream).

In: `connected`, `start` (stream/call ids, `audio/x-mulaw` 8 kHz mono), `media` (base64 μ-law, ~20 ms),
`mark` (echo of a mark we sent, i.e. audio before it has been played), `dtmf`, `stop`.
Out: `media` (reply audio, μ-law 8 kHz), a `mark` after each reply piece, and `clear` on barge-in.

Marks are how a phone call tells us what the caller really heard: each mark is named
`<reply_id>:<ms of reply audio before it>`, and its echo becomes `conversation.played(reply_id, ms)`.
The protocol has no error message, so malformed input is logged and dropped; the call goes on.

Call-center actions (docs/support-bot.md): with `[skills] call_center = true` every call gets the tools
`transfer_call(reason)` and `end_call(summary)` (app/skills/call_center.py). When the model calls one, the
reply's closing words are played, then the stream gets a mark named `specvoice:transfer_call` or
`specvoice:end_call`; the reason or summary is logged. When Twilio echoes that mark (the caller has heard
everything before it), or after ACTION_ECHO_TIMEOUT_S without an echo, the server closes the WebSocket
(1000, the action's name): the stream stops cleanly and Twilio goes on with the TwiML after `<Connect>`
(a `<Dial>` to a human for a transfer, nothing for an end). The `start` message's
`customParameters.tool_choice` (from the app's TwiML `<Parameter>`) sets the call's tool choice: auto,
none, required, or a tool's name.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from typing import Any

import numpy as np

from app import events as ev
from app.server.codecs import (
    AudioFormatError,
    StreamResampler,
    b64decode_strict,
    b64encode,
    ulaw_decode,
    ulaw_encode,
)
from app.server.session import ProtocolError, WireSession

log = logging.getLogger(__name__)
PHONE_RATE = 8000
ACTION_MARK_PREFIX = "specvoice:"
CALL_ACTIONS = ("transfer_call", "end_call")
ACTION_ECHO_TIMEOUT_S = 30.0  # the closing words are played within this (else the stream is closed anyway)


class TwilioSession(WireSession):
    endpoint = "twilio"
    needs_start = True  # no conversation (and no slot) until `start`, which must come within start_timeout_s

    def __init__(self, ws, server) -> None:
        super().__init__(ws, server)
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.sent_ms: dict[str, float] = {}  # reply_id -> ms of audio sent so far
        self.resamplers: dict[str, StreamResampler] = {}
        # replies flushed by `clear`: their late marks were never heard (the last few are enough)
        self.cleared: collections.deque[str] = collections.deque(maxlen=32)
        self.stopped = False
        self.action: tuple[str, str, str] | None = None  # (tool, reason or summary, reply_id) requested
        self.action_sent = False  # its mark went out: the caller's audio is no longer listened to
        self._action_timer: asyncio.Task[None] | None = None

    async def report(self, error: ProtocolError, data: dict[str, Any] | None = None) -> None:
        if self.count_error(error):
            log.warning("twilio stream %s: %s", self.stream_sid, error)

    async def on_message(self, data: dict[str, Any]) -> None:
        kind = data.get("event")
        if self.stopped:
            raise ProtocolError(f"{kind!r} after `stop`", "after_stop")
        if kind == "connected":
            return
        if kind == "start":
            await self._start(data)
        elif kind == "media":
            if not self.action_sent:  # after a transfer / end, the caller is no longer listened to
                await self._media(data)
        elif kind == "mark":
            self._mark(data)
        elif kind == "stop":
            self.stopped = True
            await self.close(1000, "stream stopped")
        elif kind == "dtmf":
            return
        else:
            raise ProtocolError(f"unknown event {kind!r}", "unknown_event_type")

    async def _start(self, data: dict[str, Any]) -> None:
        start = data.get("start")
        if not isinstance(start, dict):
            raise ProtocolError("`start` event without a start object")
        if self.conv is not None:
            raise ProtocolError("a second `start` on one stream", "already_started")
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict) or (
            fmt and (fmt.get("encoding") != "audio/x-mulaw" or fmt.get("sampleRate") != PHONE_RATE)
        ):
            raise ProtocolError(f"unsupported media format {str(fmt)[:80]}; expected audio/x-mulaw at 8000 Hz")
        reason = self.server.refusal(self, starting=True)
        if reason is not None:  # the slot is claimed now, when the call really starts
            await self.server.refuse(self, reason)
            return
        sid = start.get("streamSid") or data.get("streamSid") or ""
        self.stream_sid = str(sid)[:64] if isinstance(sid, (str, int)) else ""
        self.call_sid = start.get("callSid") if isinstance(start.get("callSid"), str) else None
        # Phone networks cancel echo, and barge-in must work while the caller hears us: full duplex.
        await self.start_conversation(
            self.conversation_config(output_sample_rate=PHONE_RATE, echo_policy="full_duplex")
        )
        await self._add_call_tools(start.get("customParameters"))

    async def _add_call_tools(self, params: Any) -> None:
        """`[skills] call_center`: this call's own transfer_call / end_call; the TwiML's tool_choice."""
        from app.skills.call_center import CallActions, register_call_center_tools
        from app.tools import ToolRegistry

        choice = params.get("tool_choice") if isinstance(params, dict) else None
        if isinstance(choice, str) and choice not in ("auto", "none", "required"):
            choice = {"type": "function", "name": choice}
        tools = None
        skills = getattr(self.server.full_config, "skills", None)
        if getattr(skills, "call_center", False) and not any(n in self.conv.tools for n in CALL_ACTIONS):
            tools = register_call_center_tools(ToolRegistry(), CallActions())
        if tools is None and choice is None:
            return
        try:
            await self.conv.set_tools(tools, choice)
        except ValueError as exc:  # a tool_choice naming no tool: the call goes on with the default
            raise ProtocolError(f"customParameters.tool_choice: {exc}", "invalid_value") from None

    async def _media(self, data: dict[str, Any]) -> None:
        if self.conv is None:
            raise ProtocolError("`media` before `start`")
        media = data.get("media")
        if not isinstance(media, dict):
            raise ProtocolError("`media` event without a media object")
        if media.get("track", "inbound") not in ("inbound", "inbound_track"):
            return
        try:
            payload = b64decode_strict(media.get("payload"))
        except AudioFormatError as exc:
            raise ProtocolError(str(exc), "invalid_audio") from None
        if not payload:
            raise ProtocolError("empty media payload", "invalid_audio")
        if len(payload) > PHONE_RATE * self.server.config.max_queued_audio_s:
            raise ProtocolError("media payload longer than the queued-audio limit", "invalid_audio")
        await self.push_audio(ulaw_decode(payload), PHONE_RATE)  # paced and sliced (WireSession)

    def _mark(self, data: dict[str, Any]) -> None:
        mark = data.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str) or ":" not in name:
            raise ProtocolError(f"mark with an unknown name {name!r}")
        if name.startswith(ACTION_MARK_PREFIX):
            if self.action_sent and name == ACTION_MARK_PREFIX + self.action[0]:
                self._finish_action()  # the caller heard everything before it: stop the stream
            return
        reply_id, _, ms = name.rpartition(":")
        if reply_id in self.cleared or self.conv is None:
            return
        try:
            played = float(ms)
        except ValueError:
            raise ProtocolError(f"mark with an unknown name {name[:80]!r}") from None
        if not math.isfinite(played) or played < 0:
            raise ProtocolError(f"mark with a bad position {name[:80]!r}", "invalid_value")
        self.conv.played(reply_id, played)

    async def _send(self, event: str, **fields: Any) -> None:
        await self.send_json({"event": event, "streamSid": self.stream_sid, **fields})

    async def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ToolCall) and event.name in CALL_ACTIONS and self.action is None:
            text = next((v for v in event.arguments.values() if isinstance(v, str)), "")
            self.action = (event.name, text, event.reply_id)
        await self._on_conversation_event(event)
        ends_reply = isinstance(event, (ev.ReplyDone, ev.Interrupted))
        if ends_reply and self.action and not self.action_sent and event.reply_id == self.action[2]:
            await self._send_action_mark()

    async def _on_conversation_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ReplyAudio):
            resampler = self.resamplers.get(event.reply_id)
            if resampler is None:
                # One reply plays at a time: anything older (a reply that failed) is dropped, not kept.
                self.resamplers.clear()
                resampler = self.resamplers[event.reply_id] = StreamResampler(event.sample_rate, PHONE_RATE)
            pcm = resampler.process(np.frombuffer(event.pcm, dtype="<i2"))
            await self._send_audio(event.reply_id, pcm)
        elif isinstance(event, ev.ReplyDone):
            resampler = self.resamplers.pop(event.reply_id, None)
            if resampler is not None:
                await self._send_audio(event.reply_id, resampler.process(np.zeros(0, np.int16), last=True))
            self.sent_ms.pop(event.reply_id, None)
        elif isinstance(event, ev.Interrupted):
            self.cleared.append(event.reply_id)
            self.resamplers.pop(event.reply_id, None)
            self.sent_ms.pop(event.reply_id, None)
            await self._send("clear")
        elif isinstance(event, ev.ErrorEvent):
            log.warning("twilio stream %s: conversation error: %s", self.stream_sid, event.message)

    async def _send_action_mark(self) -> None:
        """The reply that asked for the action is over (its audio all sent): the action's mark follows it."""
        name, text, _ = self.action
        what = "reason" if name == "transfer_call" else "summary"
        log.info("twilio call %s stream %s: %s, %s: %s", self.call_sid, self.stream_sid, name, what, text)
        self.action_sent = True
        await self._send("mark", mark={"name": ACTION_MARK_PREFIX + name})
        self._action_timer = asyncio.create_task(self._close_after_timeout(), name="twilio-action-timeout")

    async def _close_after_timeout(self) -> None:
        await asyncio.sleep(ACTION_ECHO_TIMEOUT_S)  # a bound on a peer that never echoes, not a sync
        log.warning("twilio stream %s: no echo of the %s mark; closing", self.stream_sid, self.action[0])
        self._finish_action()

    async def stop_conversation(self) -> None:
        if self._action_timer is not None and self._action_timer is not asyncio.current_task():
            self._action_timer.cancel()
        await super().stop_conversation()

    def _finish_action(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self._action_timer is not None and self._action_timer is not asyncio.current_task():
            self._action_timer.cancel()
        task = asyncio.ensure_future(self.close(1000, self.action[0]))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _send_audio(self, reply_id: str, pcm: np.ndarray) -> None:
        if pcm.size == 0 or reply_id in self.cleared:
            return
        await self._send("media", media={"payload": b64encode(ulaw_encode(pcm))})
        if reply_id not in self.sent_ms and len(self.sent_ms) >= 8:  # replies that never finished
            self.sent_ms.pop(next(iter(self.sent_ms)))
        sent = self.sent_ms.get(reply_id, 0.0) + 1000.0 * pcm.size / PHONE_RATE
        self.sent_ms[reply_id] = sent
        await self._send("mark", mark={"name": f"{reply_id}:{sent:.0f}"})
