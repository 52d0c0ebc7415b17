"""The telephony endpoint, speaking Twilio's Media Streams protocol (bidirectional stream).

In: `connected`, `start` (stream/call ids, `audio/x-mulaw` 8 kHz mono), `media` (base64 μ-law, ~20 ms),
`mark` (echo of a mark we sent, i.e. audio before it has been played), `dtmf`, `stop`.
Out: `media` (reply audio, μ-law 8 kHz), a `mark` after each reply piece, and `clear` on barge-in.

Marks are how a phone call tells us what the caller really heard: each mark is named
`<reply_id>:<ms of reply audio before it>`, and its echo becomes `conversation.played(reply_id, ms)`.
The protocol has no error message, so malformed input is logged and dropped; the call goes on.
"""

from __future__ import annotations

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

    async def _send_audio(self, reply_id: str, pcm: np.ndarray) -> None:
        if pcm.size == 0 or reply_id in self.cleared:
            return
        await self._send("media", media={"payload": b64encode(ulaw_encode(pcm))})
        if reply_id not in self.sent_ms and len(self.sent_ms) >= 8:  # replies that never finished
            self.sent_ms.pop(next(iter(self.sent_ms)))
        sent = self.sent_ms.get(reply_id, 0.0) + 1000.0 * pcm.size / PHONE_RATE
        self.sent_ms[reply_id] = sent
        await self._send("mark", mark={"name": f"{reply_id}:{sent:.0f}"})
