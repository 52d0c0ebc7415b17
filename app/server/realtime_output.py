"""The Realtime endpoint's output side: Conversation events -> Realtime server events.

A mixin of `RealtimeSession` (app/server/realtime.py owns the state and the client -> conversation side):
one Conversation reply becomes one `response` with its message item (audio or text, as the reply's
modalities say), its function_call items and a `response.done` that lists them.
"""

from __future__ import annotations

import collections
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import events as ev
from app.server.codecs import StreamResampler, b64encode, encode_audio
from app.server.realtime_schema import (
    SessionSettings,
    assistant_item,
    function_call_item,
    function_call_output_item,
    response_object,
    tools_registry,
)
from app.server.session import ProtocolError

log = logging.getLogger(__name__)
SERVER_SIDE_CODES = {"server_error", "internal_error"}  # conversation errors that are not the client's


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
    cancel_reason: str | None = None  # set by response.cancel; a barge-in leaves it None (turn_detected)
    text_only: bool = False  # output_modalities ["text"]: output_text events, no audio
    message_started: bool = False  # the assistant message item is announced at its first text or audio
    message_index: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)  # finished output items, in order
    call_items: dict[str, str] = field(default_factory=dict)  # call_id -> function_call item id


class RealtimeOutput:
    """Methods of RealtimeSession (see there for the attributes)."""

    settings: SessionSettings
    conv: Any
    replies: dict[str, Reply]
    items: dict[str, Reply]
    current: Reply | None
    previous_item: str | None
    partial_sent: str
    response_requested: bool
    requested_text_only: bool | None
    overridden: bool
    early_cancel: str | None
    pending_text_chars: int
    turn_signals: bool
    awaiting_transcript: collections.deque[str]
    finished: collections.deque[str]

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
        elif isinstance(event, ev.TurnSignals):
            if self.turn_signals:
                await self.emit(
                    "specvoice.turn_signals",
                    item_id=self._user_item(),
                    audio_p=event.audio_p,
                    text_p=event.text_p,
                    silence_ms=round(event.silence_ms, 1),
                    wait_ms=round(event.wait_ms, 1),
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
            if event.reply_id not in self.finished:  # cancelled before it started: already answered
                await self._reply_started(self._reply(event.reply_id))
        elif isinstance(event, ev.ReplyTextDelta):
            if event.reply_id in self.finished:
                return
            reply = self._reply(event.reply_id)
            await self._start_message(reply)
            reply.transcript += event.text
            kind = (
                "response.output_text.delta" if reply.text_only else "response.output_audio_transcript.delta"
            )
            await self.emit(kind, **self._part_ids(reply), delta=event.text)
        elif isinstance(event, ev.ToolCall):
            if event.reply_id not in self.finished:
                await self._function_call(self._reply(event.reply_id), event)
        elif isinstance(event, ev.ToolResult):
            reply = self.replies.get(event.reply_id)
            if reply is not None and event.call_id in reply.call_items:
                # A server-side tool (e.g. a skill) ran: the client sees its output as an item.
                output = json.dumps(
                    event.output if event.error is None else {"error": event.error}, default=str
                )
                item = function_call_output_item(new_id("item"), event.call_id, output)
                await self.emit("conversation.item.added", previous_item_id=self.previous_item, item=item)
                await self.emit("conversation.item.done", previous_item_id=self.previous_item, item=item)
                self.previous_item = item["id"]
        elif isinstance(event, ev.ReplyAudio):
            if event.reply_id not in self.finished:
                await self._reply_audio(event)
        elif isinstance(event, ev.ReplyDone):
            if event.reply_id not in self.finished:
                await self._reply_finished(self._reply(event.reply_id), "completed", event.text)
        elif isinstance(event, ev.Interrupted):
            if event.reply_id in self.finished:
                return  # cut while the client was still playing it: the client truncates, nothing to say
            reply = self._reply(event.reply_id)
            if reply is not self.current:  # cancelled before its ReplyStarted came through
                await self._reply_started(reply)
            reason = reply.cancel_reason or "turn_detected"
            await self._reply_finished(reply, "cancelled", event.spoken_text, reason)
        elif isinstance(event, ev.ErrorEvent):
            if event.code in SERVER_SIDE_CODES:
                log.warning("realtime session: conversation error: %s", event.message)
            await self.report(ProtocolError(event.message, event.code))
            if self.current is not None and self._reply_failed(self.current):
                # No ReplyDone will come: end the response `failed`, and let the conversation drop the
                # dead reply so that the next response.create starts a fresh one.
                await self._reply_finished(self.current, "failed", self.current.transcript)
                await self.conv.cancel()

    def _reply(self, reply_id: str) -> Reply:
        reply = self.replies.get(reply_id)
        if reply is None:  # the first event of a reply: give it stable ids
            reply = self.replies[reply_id] = Reply(reply_id, text_only=self.settings.text_only)
            self.items[reply.item_id] = reply
            if self.response_requested:  # the reply response.create asked for
                self.response_requested = False
                reply.cancel_reason, self.early_cancel = self.early_cancel, None
                if self.requested_text_only is not None:
                    reply.text_only = self.requested_text_only
                self.requested_text_only = None
        return reply

    def _reply_failed(self, reply: Reply) -> bool:
        """Did the conversation's task for this reply end with an exception (so no ReplyDone will come)?"""
        conv_reply = getattr(self.conv, "_replies", {}).get(reply.reply_id)
        task = getattr(conv_reply, "task", None)
        return task is not None and task.done() and not task.cancelled() and task.exception() is not None

    @staticmethod
    def _part_ids(reply: Reply) -> dict[str, Any]:
        return {
            "response_id": reply.response_id,
            "item_id": reply.item_id,
            "output_index": reply.message_index,
            "content_index": 0,
        }

    async def _reply_started(self, reply: Reply) -> None:
        self.current = reply
        self.pending_text_chars = 0
        await self.emit(
            "response.created",
            response=response_object(
                reply.response_id, "in_progress", [], self.settings, text_only=reply.text_only
            ),
        )

    async def _start_message(self, reply: Reply) -> None:
        """The assistant message item, announced at its first text or audio (a reply that only calls a
        tool has none)."""
        if reply.message_started:
            return
        reply.message_started = True
        reply.message_index = len(reply.outputs)
        item = assistant_item(reply.item_id, "in_progress", "", reply.text_only)
        await self.emit(
            "response.output_item.added",
            response_id=reply.response_id,
            output_index=reply.message_index,
            item=item,
        )
        await self.emit("conversation.item.added", previous_item_id=self.previous_item, item=item)
        part = {"type": "text", "text": ""} if reply.text_only else {"type": "audio", "transcript": ""}
        await self.emit("response.content_part.added", **self._part_ids(reply), part=part)
        self.previous_item = reply.item_id

    async def _function_call(self, reply: Reply, call: ev.ToolCall) -> None:
        """A function_call output item, its arguments (one delta: the constrained call is written before it
        is announced) and its end."""
        if reply is not self.current:
            await self._reply_started(reply)
        index = len(reply.outputs) + (1 if reply.message_started else 0)
        item_id = new_id("item")
        reply.call_items[call.call_id] = item_id
        ids = {
            "response_id": reply.response_id,
            "item_id": item_id,
            "output_index": index,
            "call_id": call.call_id,
        }
        added = function_call_item(item_id, call.call_id, call.name, "", "in_progress")
        await self.emit(
            "response.output_item.added", response_id=reply.response_id, output_index=index, item=added
        )
        await self.emit("conversation.item.added", previous_item_id=self.previous_item, item=added)
        self.previous_item = item_id
        await self.emit("response.function_call_arguments.delta", **ids, delta=call.arguments_json)
        await self.emit(
            "response.function_call_arguments.done", **ids, name=call.name, arguments=call.arguments_json
        )
        done = function_call_item(item_id, call.call_id, call.name, call.arguments_json, "completed")
        await self.emit(
            "response.output_item.done", response_id=reply.response_id, output_index=index, item=done
        )
        await self.emit("conversation.item.done", previous_item_id=None, item=done)
        reply.outputs.append(done)

    async def _reply_audio(self, event: ev.ReplyAudio) -> None:
        reply = self._reply(event.reply_id)
        await self._start_message(reply)
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
        output = list(reply.outputs)
        if reply.message_started or not reply.outputs:  # a reply that only called a tool has no message
            await self._start_message(reply)
            ids = self._part_ids(reply)
            if reply.text_only:
                await self.emit("response.output_text.done", **ids, text=transcript)
                part = {"type": "text", "text": transcript}
            else:
                await self.emit("response.output_audio.done", **ids)
                await self.emit("response.output_audio_transcript.done", **ids, transcript=transcript)
                part = {"type": "audio", "transcript": transcript}
            await self.emit("response.content_part.done", **ids, part=part)
            item = assistant_item(
                reply.item_id,
                "completed" if status == "completed" else "incomplete",
                transcript,
                reply.text_only,
            )
            await self.emit(
                "response.output_item.done", response_id=reply.response_id, output_index=reply.message_index,
                item=item,
            )  # fmt: skip
            await self.emit("conversation.item.done", previous_item_id=None, item=item)
            output.insert(reply.message_index, item)
        if status == "cancelled":
            details = {"type": status, "reason": reason}
        elif status == "failed":
            details = {
                "type": "failed",
                "error": {"type": "server_error", "code": "reply_failed", "message": "the reply failed"},
            }
        else:
            details = None
        if self.overridden and not self.response_requested:
            # A response with its own tools or instructions is over: the session's come back before the
            # client hears so (each a no-op when it was not overridden).
            self.overridden = False
            await self.conv.set_instructions(self.settings.instructions)
            await self.conv.set_tools(tools_registry(self.settings.tools), self.settings.tool_choice)
        await self.emit(
            "response.done",
            response=response_object(
                reply.response_id, status, output, self.settings, details, reply.text_only
            ),
        )
        self.finished.append(reply.reply_id)
        if self.current is reply:
            self.current = None
        self.replies.pop(reply.reply_id, None)  # keep `items` for a later truncate; bounded below
        if len(self.items) > 64:
            for old in list(self.items)[:-64]:
                del self.items[old]
