"""The OpenAI-Realtime-compatible endpoint (GA event names; the beta `session.update` shape is accepted too).

A translation table between Realtime wire events and the Conversation API, nothing more: turn taking,
barge-in and reply generation all live in the Conversation. Audio formats: pcm16 (24 kHz unless the
client says otherwise), G.711 μ-law and A-law at 8 kHz.
"""

from __future__ import annotations

import collections
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import events as ev
from app.server.codecs import (
    AudioFormatError,
    StreamResampler,
    b64decode_strict,
    b64encode,
    decode_audio,
    encode_audio,
)
from app.server.realtime_schema import (
    SessionSettings,
    assistant_item,
    parse_session_update,
    response_object,
    session_object,
)
from app.server.session import ProtocolError, WireSession

MIN_COMMIT_MS = 100.0  # what the Realtime API asks for before a manual commit


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:22]}"


@dataclass
class Reply:
    """Wire-side bookkeeping for one Conversation reply."""

    reply_id: str
    response_id: str = field(default_factory=lambda: new_id("resp"))
    item_id: str = field(default_factory=lambda: new_id("item"))
    transcript: str = ""
    audio_ms: float = 0.0
    resampler: StreamResampler | None = None


class RealtimeSession(WireSession):
    endpoint = "realtime"

    def __init__(self, ws, server) -> None:
        super().__init__(ws, server)
        self.session_id = new_id("sess")
        self.settings = SessionSettings.from_config(server.full_config)
        self._event_numbers = itertools.count(1)
        self.replies: dict[str, Reply] = {}  # reply_id -> Reply
        self.items: dict[str, Reply] = {}  # assistant item_id -> Reply (for truncate)
        self.current: Reply | None = None
        self.user_item: str | None = None
        self.previous_item: str | None = None
        self.partial_sent = ""
        self.uncommitted_ms = 0.0
        self.used = False  # audio or text reached the conversation: settings that shape it are now fixed
        self.cancel_reason: str | None = None
        self.awaiting_transcript: collections.deque[str] = collections.deque(maxlen=8)
        self.finished: collections.deque[str] = collections.deque(maxlen=32)  # reply ids already done

    # --- helpers ----------------------------------------------------------------------------------------
    async def emit(self, type_: str, **fields: Any) -> None:
        await self.send_json(
            {
                "type": type_,
                "event_id": f"event_{self.session_id[5:13]}_{next(self._event_numbers)}",
                **fields,
            }
        )

    async def report(self, error: ProtocolError, data: dict[str, Any] | None = None) -> None:
        client_event_id = data.get("event_id") if isinstance(data, dict) else None
        await self.emit(
            "error",
            error={
                "type": "server_error" if error.code == "server_error" else "invalid_request_error",
                "code": error.code,
                "message": str(error),
                "param": error.param,
                "event_id": client_event_id if isinstance(client_event_id, str) else None,
            },
        )

    def _new_conversation_config(self):
        # Realtime clients cancel their own echo (browsers do, the API expects it), so the server listens
        # while it speaks: that is what makes barge-in possible over a websocket.
        return self.conversation_config(
            **self.settings.conversation_changes(),
            echo_policy="full_duplex",
            output_sample_rate=self.settings.output_rate,
            system_prompt=self.settings.instructions,
        )

    async def open(self) -> None:
        await self.start_conversation(self._new_conversation_config())
        await self.emit(
            "session.created", session=session_object(self.session_id, self.settings, self.server.full_config)
        )

    def _user_item(self) -> str:
        if self.user_item is None:
            self.user_item = new_id("item")
        return self.user_item

    # --- client -> conversation ---------------------------------------------------------------------------
    async def on_message(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        handler = HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise ProtocolError(f"unknown event type {kind!r}", "unknown_event_type", "type")
        await handler(self, data)

    async def session_update(self, data: dict[str, Any]) -> None:
        session = data.get("session")
        if not isinstance(session, dict):
            raise ProtocolError("session.update needs a `session` object", "invalid_value", "session")
        new = parse_session_update(self.settings, session)
        if new.instructions != self.settings.instructions:
            if self.used:
                raise ProtocolError(
                    "instructions can only change before the first audio or text",
                    "session_update_too_late",
                    "session.instructions",
                )
            self.settings = new
            await self.start_conversation(self._new_conversation_config())
        elif new.conversation_changes() != self.settings.conversation_changes():
            self.conv.update(**new.conversation_changes())
            self.settings = new
        else:
            self.settings = new
        await self.emit(
            "session.updated", session=session_object(self.session_id, self.settings, self.server.full_config)
        )

    async def audio_append(self, data: dict[str, Any]) -> None:
        try:
            raw = b64decode_strict(data.get("audio"))
            pcm = decode_audio(raw, self.settings.input_codec)
        except AudioFormatError as exc:
            raise ProtocolError(str(exc), "invalid_audio", "audio") from None
        if pcm.size == 0:
            raise ProtocolError("audio is empty", "invalid_audio", "audio")
        duration_ms = 1000.0 * pcm.size / self.settings.input_rate
        limit_ms = 1000.0 * self.server.config.max_queued_audio_s
        # Manual turn taking keeps everything until a commit: bound it. With VAD the conversation consumes
        # the audio as it arrives (push_audio awaits), so nothing piles up.
        if self.settings.turn_detection is None and self.uncommitted_ms + duration_ms > limit_ms:
            raise ProtocolError(
                f"input audio buffer is full ({limit_ms / 1000:.0f} s uncommitted); commit or clear it",
                "input_audio_buffer_full",
                "audio",
            )
        self.uncommitted_ms += duration_ms
        self.used = True
        await self.conv.push_audio(pcm, self.settings.input_rate)

    async def audio_commit(self, data: dict[str, Any]) -> None:
        if self.uncommitted_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                f"buffer too small: {self.uncommitted_ms:.0f} ms of audio, need {MIN_COMMIT_MS:.0f} ms",
                "input_audio_buffer_commit_empty",
            )
        await self._committed()
        await self.conv.commit()  # waits for the final decode; the transcript follows as an event

    async def _committed(self) -> None:
        item = self._user_item()
        await self.emit("input_audio_buffer.committed", item_id=item, previous_item_id=self.previous_item)
        self.previous_item = item
        self.awaiting_transcript.append(item)
        self.user_item = None
        self.uncommitted_ms = 0.0

    async def audio_clear(self, data: dict[str, Any]) -> None:
        await self.conv.clear_audio()
        self.uncommitted_ms = 0.0
        await self.emit("input_audio_buffer.cleared")

    async def item_create(self, data: dict[str, Any]) -> None:
        item = data.get("item")
        if not isinstance(item, dict):
            raise ProtocolError("conversation.item.create needs an `item` object", "invalid_value", "item")
        if item.get("type", "message") != "message" or item.get("role") != "user":
            raise ProtocolError("only user text messages can be added", "unsupported_item", "item.role")
        texts = [
            part.get("text")
            for part in item.get("content") or []
            if isinstance(part, dict)
            and part.get("type") in ("input_text", "text")
            and isinstance(part.get("text"), str)
        ]
        text = " ".join(t.strip() for t in texts if t.strip())
        if not text:
            raise ProtocolError("the item has no input_text content", "invalid_value", "item.content")
        item_id = item.get("id") if isinstance(item.get("id"), str) else new_id("item")
        self.used = True
        await self.conv.send_text(text, respond=False)
        wire_item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": text}],
        }
        await self.emit("conversation.item.added", previous_item_id=self.previous_item, item=wire_item)
        await self.emit("conversation.item.done", previous_item_id=self.previous_item, item=wire_item)
        self.previous_item = item_id

    async def response_create(self, data: dict[str, Any]) -> None:
        self.used = True
        await self.conv.respond()

    async def response_cancel(self, data: dict[str, Any]) -> None:
        if self.current is None:
            raise ProtocolError("there is no response in progress to cancel", "response_cancel_not_active")
        self.cancel_reason = "client_cancelled"
        await self.conv.cancel()

    async def item_truncate(self, data: dict[str, Any]) -> None:
        item_id, end_ms = data.get("item_id"), data.get("audio_end_ms")
        reply = self.items.get(item_id) if isinstance(item_id, str) else None
        if reply is None:
            raise ProtocolError(f"no assistant item {item_id!r} to truncate", "item_not_found", "item_id")
        if not isinstance(end_ms, (int, float)) or isinstance(end_ms, bool) or end_ms < 0:
            raise ProtocolError("audio_end_ms must be a non-negative number", "invalid_value", "audio_end_ms")
        if end_ms > reply.audio_ms + 1:
            raise ProtocolError(
                f"audio_end_ms {end_ms} is past the {reply.audio_ms:.0f} ms of audio sent",
                "invalid_value",
                "audio_end_ms",
            )
        self.conv.played(reply.reply_id, float(end_ms))
        await self.emit(
            "conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=int(end_ms)
        )

    # --- conversation -> client -----------------------------------------------------------------------------
    async def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.SpeechStarted):
            self.partial_sent = ""
            await self.emit(
                "input_audio_buffer.speech_started",
                audio_start_ms=int(event.audio_ms),
                item_id=self._user_item(),
            )
        elif isinstance(event, ev.SpeechStopped):
            await self.emit(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=int(event.audio_ms),
                item_id=self._user_item(),
            )
            if self.settings.turn_detection is not None:
                await self._committed()
        elif isinstance(event, ev.TranscriptPartial):
            if event.committed.startswith(self.partial_sent) and len(event.committed) > len(
                self.partial_sent
            ):
                delta = event.committed[len(self.partial_sent) :]
                self.partial_sent = event.committed
                await self.emit(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=self._user_item(),
                    content_index=0,
                    delta=delta,
                )
        elif isinstance(event, ev.TranscriptFinal):
            item = self.awaiting_transcript.popleft() if self.awaiting_transcript else self._user_item()
            await self.emit(
                "conversation.item.input_audio_transcription.completed",
                item_id=item,
                content_index=0,
                transcript=event.text,
                usage={"type": "duration", "seconds": 0},
            )
            self.partial_sent = ""
        elif isinstance(event, ev.ReplyStarted):
            await self._reply_started(event)
        elif isinstance(event, ev.ReplyTextDelta):
            reply = self._reply(event.reply_id)
            reply.transcript += event.text
            await self.emit(
                "response.output_audio_transcript.delta", **self._part_ids(reply), delta=event.text
            )
        elif isinstance(event, ev.ReplyAudio):
            await self._reply_audio(event)
        elif isinstance(event, ev.ReplyDone):
            await self._reply_finished(self._reply(event.reply_id), "completed", event.text)
        elif isinstance(event, ev.Interrupted):
            if event.reply_id in self.finished:
                return  # cut while the client was still playing it: the client truncates, nothing to say
            reason = self.cancel_reason or "turn_detected"
            self.cancel_reason = None
            await self._reply_finished(self._reply(event.reply_id), "cancelled", event.spoken_text, reason)
        elif isinstance(event, ev.ErrorEvent):
            await self.report(ProtocolError(event.message, event.code))

    def _reply(self, reply_id: str) -> Reply:
        reply = self.replies.get(reply_id)
        if reply is None:  # an event for a reply we never saw start: still give it stable ids
            reply = self.replies[reply_id] = Reply(reply_id)
            self.items[reply.item_id] = reply
        return reply

    @staticmethod
    def _part_ids(reply: Reply) -> dict[str, Any]:
        return {
            "response_id": reply.response_id,
            "item_id": reply.item_id,
            "output_index": 0,
            "content_index": 0,
        }

    async def _reply_started(self, event: ev.ReplyStarted) -> None:
        reply = self._reply(event.reply_id)
        self.current = reply
        await self.emit(
            "response.created", response=response_object(reply.response_id, "in_progress", [], self.settings)
        )
        item = assistant_item(reply.item_id, "in_progress", "")
        await self.emit(
            "response.output_item.added", response_id=reply.response_id, output_index=0, item=item
        )
        await self.emit("conversation.item.added", previous_item_id=self.previous_item, item=item)
        await self.emit(
            "response.content_part.added", **self._part_ids(reply), part={"type": "audio", "transcript": ""}
        )
        self.previous_item = reply.item_id

    async def _reply_audio(self, event: ev.ReplyAudio) -> None:
        reply = self._reply(event.reply_id)
        if reply.resampler is None:
            reply.resampler = StreamResampler(event.sample_rate, self.settings.output_rate)
        pcm = reply.resampler.process(np.frombuffer(event.pcm, dtype="<i2"))
        if pcm.size == 0:
            return
        reply.audio_ms += 1000.0 * pcm.size / self.settings.output_rate
        await self.emit(
            "response.output_audio.delta",
            **self._part_ids(reply),
            delta=b64encode(encode_audio(pcm, self.settings.output_codec)),
        )

    async def _reply_finished(self, reply: Reply, status: str, text: str, reason: str | None = None) -> None:
        if reply.resampler is not None and status == "completed":
            tail = reply.resampler.process(np.zeros(0, np.int16), last=True)
            if tail.size:
                reply.audio_ms += 1000.0 * tail.size / self.settings.output_rate
                await self.emit(
                    "response.output_audio.delta",
                    **self._part_ids(reply),
                    delta=b64encode(encode_audio(tail, self.settings.output_codec)),
                )
        transcript = text or reply.transcript
        ids = self._part_ids(reply)
        await self.emit("response.output_audio.done", **ids)
        await self.emit("response.output_audio_transcript.done", **ids, transcript=transcript)
        await self.emit("response.content_part.done", **ids, part={"type": "audio", "transcript": transcript})
        item = assistant_item(
            reply.item_id, "completed" if status == "completed" else "incomplete", transcript
        )
        await self.emit("response.output_item.done", response_id=reply.response_id, output_index=0, item=item)
        await self.emit("conversation.item.done", previous_item_id=None, item=item)
        details = {"type": status, "reason": reason} if status == "cancelled" else None
        await self.emit(
            "response.done",
            response=response_object(reply.response_id, status, [item], self.settings, details),
        )
        self.finished.append(reply.reply_id)
        if self.current is reply:
            self.current = None
        self.replies.pop(reply.reply_id, None)  # keep `items` for a later truncate; bounded below
        if len(self.items) > 64:
            for old in list(self.items)[:-64]:
                del self.items[old]


HANDLERS = {
    "session.update": RealtimeSession.session_update,
    "input_audio_buffer.append": RealtimeSession.audio_append,
    "input_audio_buffer.commit": RealtimeSession.audio_commit,
    "input_audio_buffer.clear": RealtimeSession.audio_clear,
    "conversation.item.create": RealtimeSession.item_create,
    "conversation.item.truncate": RealtimeSession.item_truncate,
    "response.create": RealtimeSession.response_create,
    "response.cancel": RealtimeSession.response_cancel,
}
