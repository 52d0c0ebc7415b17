"""Typed events that a Conversation emits, one small frozen dataclass per kind.

Every transport (microphone, websocket, telephony, embedding bot) consumes these and nothing else,
so adapters stay thin: they translate events to their wire format and never hold conversation logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class SpeechStarted:
    type: ClassVar[str] = "speech_started"
    audio_ms: float  # position in the input stream (ms since the conversation began)


@dataclass(frozen=True)
class SpeechStopped:
    type: ClassVar[str] = "speech_stopped"
    audio_ms: float


@dataclass(frozen=True)
class TranscriptPartial:
    """Committed text only ever grows within a turn; tentative text may change on the next decode."""

    type: ClassVar[str] = "transcript_partial"
    committed: str
    tentative: str


@dataclass(frozen=True)
class TranscriptFinal:
    type: ClassVar[str] = "transcript_final"
    text: str


@dataclass(frozen=True)
class TurnSignals:
    """What the end-of-turn rule sees during a silence, for consoles that show it: the Smart Turn
    probability that the turn is finished (audio), the LLM's (text), the silence so far and the wait the
    rule chose. A probability is None when that signal was not ready in time."""

    type: ClassVar[str] = "turn_signals"
    audio_p: float | None
    text_p: float | None
    silence_ms: float
    wait_ms: float


@dataclass(frozen=True)
class ReplyStarted:
    type: ClassVar[str] = "reply_started"
    reply_id: str


@dataclass(frozen=True)
class ReplyTextDelta:
    type: ClassVar[str] = "reply_text_delta"
    reply_id: str
    text: str


@dataclass(frozen=True)
class ReplyAudio:
    """A chunk of reply speech: mono little-endian int16 PCM at `sample_rate`."""

    type: ClassVar[str] = "reply_audio"
    reply_id: str
    pcm: bytes
    sample_rate: int

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.pcm) / 2 / self.sample_rate


@dataclass(frozen=True)
class ReplyDone:
    type: ClassVar[str] = "reply_done"
    reply_id: str
    text: str


@dataclass(frozen=True)
class ToolCall:
    """The reply calls a tool. `arguments` always match the tool's schema (constrained decoding);
    `arguments_json` is the same as JSON text. `client_side`: the app runs it and answers with
    `Conversation.add_tool_output(call_id, output)` (the reply ends here); otherwise the conversation runs
    it and a ToolResult follows."""

    type: ClassVar[str] = "tool_call"
    reply_id: str
    call_id: str
    name: str
    arguments: dict[str, Any]
    arguments_json: str
    client_side: bool = False


@dataclass(frozen=True)
class ToolResult:
    """A server-side tool finished: `output` (JSON-able) or `error` (bad arguments, an exception, a
    timeout), after `ms` milliseconds. What the model reads next is the output or `{"error": ...}`."""

    type: ClassVar[str] = "tool_result"
    reply_id: str
    call_id: str
    name: str
    output: Any = None
    error: str | None = None
    ms: float = 0.0


@dataclass(frozen=True)
class Interrupted:
    """A reply was cut short (barge-in or cancel); `spoken_text` is what the user actually heard."""

    type: ClassVar[str] = "interrupted"
    reply_id: str
    spoken_text: str


@dataclass(frozen=True)
class Metrics:
    type: ClassVar[str] = "metrics"
    reply_id: str
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorEvent:
    type: ClassVar[str] = "error"
    message: str
    code: str = "error"


Event = (
    SpeechStarted
    | SpeechStopped
    | TranscriptPartial
    | TranscriptFinal
    | TurnSignals
    | ReplyStarted
    | ReplyTextDelta
    | ReplyAudio
    | ReplyDone
    | ToolCall
    | ToolResult
    | Interrupted
    | Metrics
    | ErrorEvent
)
