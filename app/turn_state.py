"""The user's turn as an explicit state machine: one `TurnState` per utterance, legal moves in a table.

    SPEAKING --silence--> PAUSED --wait reached--> ENDED --final transcript--> FINAL
        ^                   |                        |
        +----voice again----+                        +--user spoke again first--> RESUMED --> FINAL
    SPEAKING/PAUSED --clear_audio()--> DROPPED;   SPEAKING --commit()--> ENDED

What a silence prepares (the end-of-turn signals, the decode of everything heard, the preemptive reply)
lives in one `SilenceWork` that exists exactly while the utterance is PAUSED (and is kept into ENDED,
where the decode and the reply are reused); going back to SPEAKING drops it whole.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from asr.streaming import StreamingTranscriber


class TurnState(enum.Enum):
    SPEAKING = "speaking"  # voiced audio is coming in
    PAUSED = "paused"  # silence: signals measured, preemptive reply prepared, wait counting
    ENDED = "ended"  # endpoint decided (speech_stopped sent); the final transcript is being settled
    RESUMED = "resumed"  # ended, but the user spoke again before its reply was confirmed: merge forward
    FINAL = "final"  # transcript_final sent; the reply (if any) belongs to the reply side now
    DROPPED = "dropped"  # clear_audio(): forgotten


TRANSITIONS: dict[TurnState, frozenset[TurnState]] = {
    TurnState.SPEAKING: frozenset({TurnState.PAUSED, TurnState.ENDED, TurnState.DROPPED}),
    TurnState.PAUSED: frozenset({TurnState.SPEAKING, TurnState.ENDED, TurnState.DROPPED}),
    TurnState.ENDED: frozenset({TurnState.RESUMED, TurnState.FINAL}),
    TurnState.RESUMED: frozenset({TurnState.FINAL}),
    TurnState.FINAL: frozenset(),
    TurnState.DROPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A move the table does not allow: a bug in the turn logic, never a user error."""


_silences = itertools.count(1)
RECENT_FRAMES = 250  # 8 s of 32 ms frames


@dataclass
class SilenceWork:
    """Everything started for one silence inside an utterance; stale as soon as the user speaks again."""

    started_sample: int  # conversation clock when the silence work started
    started_wall: float = 0.0  # perf_counter() then (the first stage of the preemptive path)
    transcript_wall: float | None = None  # perf_counter() when the turn's transcript was known
    id: int = field(default_factory=lambda: next(_silences))
    decode: asyncio.Task | None = None  # the decode of all audio so far (-> transcript, text signal)
    reply: Any = None  # the preemptive Reply, if preemption is on
    p_audio: float | None = None  # Smart Turn P(complete), once measured
    p_text: float | None = None  # the LLM's P(end of turn), once measured
    tasks: list[asyncio.Task] = field(default_factory=list)  # the signal measurements in flight


@dataclass
class Utterance:
    """One stretch of user speech, from onset to its final transcript."""

    asr: StreamingTranscriber
    start_sample: int  # conversation clock at asr sample 0
    last_voiced_end: int
    eos_wall: float
    state: TurnState = TurnState.SPEAKING
    decode_task: asyncio.Task | None = None  # the partial decode in flight
    silence: SilenceWork | None = None  # only while PAUSED (kept into ENDED)
    marks: dict[str, float] = field(default_factory=dict)
    endpoint_reason: str = ""
    # The last 8 s of the user's audio in 32 ms VAD frames (what Smart Turn hears).
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_FRAMES))

    def to(self, state: TurnState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"utterance cannot go from {self.state.value} to {state.value}")
        self.state = state

    @property
    def open(self) -> bool:
        return self.state in (TurnState.SPEAKING, TurnState.PAUSED)

    def pending(self) -> list[asyncio.Task]:
        """Transcription and signal work in flight for this utterance (what `Conversation.settle` awaits)."""
        work = [self.decode_task]
        if self.silence is not None:
            work += [self.silence.decode, *self.silence.tasks]
        return [t for t in work if t is not None and not t.done()]
