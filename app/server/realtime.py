"""The OpenAI-Realtime-compatible endpoint (GA event names; the beta `session.update` shape is accepted too).

A translation table between Realtime wire events and the Conversation API, nothing more: turn taking,
barge-in and reply generation all live in the Conversation. Audio formats: pcm16 (24 kHz unless the
client says otherwise), G.711 μ-law and A-law at 8 kHz.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
from typing import Any

from app.server.codecs import (
    AudioFormatError,
    b64decode_strict,
    decode_audio,
)
from app.server.realtime_output import SERVER_SIDE_CODES, RealtimeOutput, Reply, new_id
from app.server.realtime_schema import (
    SessionSettings,
    function_call_output_item,
    parse_instructions,
    parse_modalities,
    parse_session_update,
    parse_tool_choice,
    parse_tools,
    session_object,
    tools_registry,
)
from app.server.session import ProtocolError, WireSession

log = logging.getLogger(__name__)
MIN_COMMIT_MS = 100.0  # what the Realtime API asks for before a manual commit


def vendor_turn_signals(value: Any, current: bool) -> bool:
    """`session.specvoice` (our vendor field): `{turn_signals: bool}`; absent keeps the current choice."""
    if value is None:
        return current
    if not isinstance(value, dict) or not isinstance(value.get("turn_signals", current), bool):
        raise ProtocolError(
            "session.specvoice must be an object like {turn_signals: true}",
            "invalid_value",
            "session.specvoice",
        )
    return value.get("turn_signals", current)


class RealtimeSession(RealtimeOutput, WireSession):
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
        # response.create was sent and its reply has not shown up yet; a response.cancel in that window
        # (both in one burst) cancels it before it starts, with this reason.
        self.response_requested = False
        self.requested_text_only: bool | None = None  # response.create's output_modalities, for that reply
        self.overridden = False  # the conversation holds a response.create's own tools or instructions
        self.early_cancel: str | None = None
        self.pending_text_chars = 0  # user text added since the last reply (bounded like one message)
        # The vendor event `specvoice.turn_signals` goes only to clients that ask for it with
        # `session.specvoice = {turn_signals: true}` (the browser console); SDK clients never see it.
        self.turn_signals = False
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
        server_side = error.code in SERVER_SIDE_CODES
        if not server_side:
            self.count_error(error)
        client_event_id = data.get("event_id") if isinstance(data, dict) else None
        await self.emit(
            "error",
            error={
                "type": "server_error" if server_side else "invalid_request_error",
                "code": error.code,
                "message": str(error),
                "param": error.param,
                "event_id": client_event_id
                if isinstance(client_event_id, str) and len(client_event_id) <= 128
                else None,
            },
        )

    def _new_conversation_config(self, settings: SessionSettings | None = None):
        # Realtime clients cancel their own echo (browsers do, the API expects it), so the server listens
        # while it speaks: that is what makes barge-in possible over a websocket.
        settings = settings or self.settings
        return self.conversation_config(
            **settings.conversation_changes(),
            echo_policy="full_duplex",
            output_sample_rate=settings.output_rate,
            system_prompt=settings.instructions,
        )

    def _idle_timeout_s(self) -> float:
        """The server's idle limit, or the client's `idle_timeout_ms` when that is shorter."""
        td = self.settings.turn_detection or {}
        limit = self.server.config.idle_timeout_s
        asked = td.get("idle_timeout_ms")
        return min(limit, asked / 1000.0) if isinstance(asked, (int, float)) and asked > 0 else limit

    async def open(self) -> None:
        await self.start_conversation(self._new_conversation_config())
        await self.emit(
            "session.created", session=session_object(self.session_id, self.settings, self.server.full_config)
        )

    def busy(self) -> bool:
        return self.current is not None or self.response_requested

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
        # Validated whole before anything changes: a refused update leaves the session as it was.
        new = parse_session_update(self.settings, session, self.server.config.max_text_chars * 4)
        turn_signals = vendor_turn_signals(session.get("specvoice"), self.turn_signals)
        try:
            new_changes = new.conversation_changes()
        except (TypeError, ValueError, KeyError) as exc:
            raise ProtocolError(
                f"bad turn_detection: {exc}", "invalid_value", "session.turn_detection"
            ) from None
        registry = tools_registry(new.tools)  # checked by parse_session_update: cannot fail here
        restarted = False
        if new.instructions != self.settings.instructions and self.used:
            # The history stays; the LLM session is rebuilt under the new prompt (after a reply in progress).
            await self.conv.set_instructions(new.instructions)
        elif new.instructions != self.settings.instructions:
            restarted = True
            try:  # the new conversation is built before the old one is closed (WireSession)
                await self.start_conversation(self._new_conversation_config(new))
            except ValueError as exc:
                raise ProtocolError(str(exc), "invalid_value", "session") from None
        elif new_changes != self.settings.conversation_changes():
            try:
                self.conv.update(**new_changes)  # validates the whole config before applying it
            except ValueError as exc:
                raise ProtocolError(str(exc), "invalid_value", "session.turn_detection") from None
        try:
            if restarted or new.tools != self.settings.tools:
                await self.conv.set_tools(registry, new.tool_choice)
            elif new.tool_choice != self.settings.tool_choice:
                self.conv.set_tool_choice(new.tool_choice)
        except ValueError as exc:  # e.g. a duplicate of a server-side tool's name
            raise ProtocolError(str(exc), "invalid_value", "session.tools") from None
        self.conv.audio_output = not new.text_only
        self.settings = new
        self.turn_signals = turn_signals
        self.idle_timeout_s = self._idle_timeout_s()
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
        if duration_ms > limit_ms:
            raise ProtocolError(
                f"one append of {duration_ms / 1000:.0f} s of audio exceeds the {limit_ms / 1000:.0f} s limit; "
                "send it in pieces",
                "audio_too_long",
                "audio",
            )
        # Manual turn taking keeps everything until a commit: bound it. With VAD the conversation consumes
        # the audio as it arrives (push_audio awaits), so nothing piles up.
        if self.settings.turn_detection is None and self.uncommitted_ms + duration_ms > limit_ms:
            raise ProtocolError(
                f"input audio buffer is full ({limit_ms / 1000:.0f} s uncommitted); commit or clear it",
                "input_audio_buffer_full",
                "audio",
            )
        if self.settings.turn_detection is None:
            self.uncommitted_ms += duration_ms
        self.used = True
        await self.push_audio(pcm, self.settings.input_rate)  # paced and sliced (WireSession)

    async def audio_commit(self, data: dict[str, Any]) -> None:
        if self.settings.turn_detection is not None:
            # VAD mode: ending the turn now makes the conversation emit SpeechStopped, which sends the one
            # `committed` (on_event); with no speech in progress the conversation reports an empty buffer.
            await self.conv.commit()
            return
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
        if item.get("type") == "function_call_output":
            await self._tool_output(item)
            return
        if item.get("type", "message") != "message" or item.get("role") != "user":
            raise ProtocolError(
                "only user text messages and function_call_output items can be added",
                "unsupported_item",
                "item.role",
            )
        content = item.get("content")
        if not isinstance(content, list):
            raise ProtocolError(
                "item.content must be a list of content parts", "invalid_value", "item.content"
            )
        texts = [
            part.get("text")
            for part in content
            if isinstance(part, dict)
            and part.get("type") in ("input_text", "text")
            and isinstance(part.get("text"), str)
        ]
        text = " ".join(t.strip() for t in texts if t.strip())
        if not text:
            raise ProtocolError("the item has no input_text content", "invalid_value", "item.content")
        limit = self.server.config.max_text_chars
        if len(text) + self.pending_text_chars > limit:
            raise ProtocolError(
                f"user text of {len(text) + self.pending_text_chars} characters exceeds the {limit}-character "
                "limit of one turn",
                "text_too_long",
                "item.content",
            )
        given_id = item.get("id")
        item_id = given_id if isinstance(given_id, str) and 0 < len(given_id) <= 64 else new_id("item")
        self.used = True
        self.pending_text_chars += len(text) + 1
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

    async def _tool_output(self, item: dict[str, Any]) -> None:
        """A client's function_call_output: the result of a call the model made in this session."""
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(call_id, str) or not isinstance(output, str):
            raise ProtocolError("function_call_output needs a string call_id and a string output",
                                "invalid_value", "item.call_id")  # fmt: skip
        limit = self.server.config.max_text_chars
        if len(output) > limit:
            raise ProtocolError(f"output of {len(output)} characters exceeds the {limit}-character limit",
                                "text_too_long", "item.output")  # fmt: skip
        try:
            await self.conv.add_tool_output(call_id, output)
        except ValueError:
            raise ProtocolError(f"no function call {call_id[:64]!r} is waiting for its output",
                                "invalid_value", "item.call_id") from None  # fmt: skip
        self.used = True
        given_id = item.get("id")
        item_id = given_id if isinstance(given_id, str) and 0 < len(given_id) <= 64 else new_id("item")
        wire_item = function_call_output_item(item_id, call_id, output)
        await self.emit("conversation.item.added", previous_item_id=self.previous_item, item=wire_item)
        await self.emit("conversation.item.done", previous_item_id=self.previous_item, item=wire_item)
        self.previous_item = item_id

    async def response_create(self, data: dict[str, Any]) -> None:
        options = data.get("response") or {}
        if not isinstance(options, dict):
            raise ProtocolError("response must be an object", "invalid_value", "response")
        tool_choice = None
        tools = self.settings.tools
        if options.get("tools") is not None:
            tools = parse_tools(options["tools"], "response.tools")
        if options.get("tool_choice") is not None:
            tool_choice = parse_tool_choice(options["tool_choice"], tools, "response.tool_choice")
        modalities = parse_modalities(options.get("output_modalities"))
        text_only = None if modalities is None else "audio" not in modalities
        instructions = parse_instructions(options.get("instructions"), self.server.config.max_text_chars * 4,
                                          "response.instructions")  # fmt: skip
        own_tools = tools != self.settings.tools
        own_instructions = instructions is not None and instructions != self.settings.instructions
        if (own_tools or own_instructions) and self.busy():
            raise ProtocolError("a response is in progress; per-response tools and instructions wait until it "
                                "is done", "conversation_already_has_active_response", "response")  # fmt: skip
        # This response's own tools / instructions: the conversation gets them now and the session's back
        # when the response is done (each change rebuilds the LLM session's prompt, same history).
        if own_instructions:
            self.overridden = True
            await self.conv.set_instructions(instructions)
        if own_tools:
            self.overridden = True
            try:
                await self.conv.set_tools(tools_registry(tools), tool_choice or "auto")
            except ValueError as exc:
                await self.conv.set_instructions(self.settings.instructions)
                self.overridden = False
                raise ProtocolError(str(exc), "invalid_value", "response.tools") from None
        self.used = True
        if self.current is None:
            self.response_requested = True
            self.requested_text_only = text_only
        await self.conv.respond(tool_choice=tool_choice, audio=None if text_only is None else not text_only)

    async def response_cancel(self, data: dict[str, Any]) -> None:
        if self.current is not None:
            self.current.cancel_reason = "client_cancelled"
        elif self.response_requested:  # asked for in the same burst: cancel it before it plays
            self.early_cancel = "client_cancelled"
        else:
            raise ProtocolError("there is no response in progress to cancel", "response_cancel_not_active")
        await self.conv.cancel()

    async def item_truncate(self, data: dict[str, Any]) -> None:
        item_id, end_ms = data.get("item_id"), data.get("audio_end_ms")
        reply = self.items.get(item_id) if isinstance(item_id, str) else None
        if reply is None:
            raise ProtocolError(f"no assistant item {item_id!r} to truncate", "item_not_found", "item_id")
        if (
            not isinstance(end_ms, (int, float))
            or isinstance(end_ms, bool)
            or not math.isfinite(end_ms)
            or end_ms < 0
        ):
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
