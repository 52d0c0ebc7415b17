"""Helpers for the conversation-loop tests (imported as `conv_helpers`; pytest puts this folder on the path): drive a Conversation with audio faster than real time.

No sleeps: audio is pushed in 20 ms chunks and the driver awaits the transcription work in flight
(`Conversation.settle()`) every `settle_ms` of audio, so ASR keeps step with the audio whatever the CPU
speed; replies are awaited through their events. Timeouts below only turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import numpy as np

from app.events import Event

RATE = 16000
HANG_GUARD_S = 180.0


def silence(ms: float) -> np.ndarray:
    return np.zeros(int(RATE * ms / 1000), dtype=np.float32)


def trim_silence(audio: np.ndarray, floor: float = 2e-3) -> np.ndarray:
    """Cut leading/trailing near-silence (Piper pads its output with ~0.2 s of it)."""
    loud = np.flatnonzero(np.abs(audio) > floor)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def words(text: str) -> list[str]:
    return re.sub(r"[^\w' ]", " ", text.lower()).split()


class Driver:
    """Feeds a conversation and records every event it emits, in order."""

    def __init__(self, conv) -> None:
        self.conv = conv
        self.events: list[Event] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.conv.events():
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    async def push(
        self, audio: np.ndarray, rate: int = RATE, chunk_ms: int = 20, settle_ms: int = 100
    ) -> None:
        chunk = rate * chunk_ms // 1000
        since_settle = 0
        for i in range(0, len(audio), chunk):
            await self.conv.push_audio(audio[i : i + chunk], rate)
            since_settle += chunk_ms
            if since_settle >= settle_ms:
                since_settle = 0
                await asyncio.sleep(0)  # let just-spawned tasks start (a yield, not a wait)
                await asyncio.wait_for(self.conv.settle(), HANG_GUARD_S)

    async def wait_for(self, predicate: Callable[[Event], bool], what: str) -> Event:
        async def _wait() -> Event:
            async with self._changed:
                while True:
                    for event in self.events:
                        if predicate(event):
                            return event
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(_wait(), HANG_GUARD_S)
        except TimeoutError:
            kinds = [e.type for e in self.events]
            raise AssertionError(f"no {what} event; got {kinds}") from None

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]

    async def close(self) -> None:
        await self.conv.close()
        await asyncio.wait_for(self._reader, HANG_GUARD_S)


def check_event_order(events: list[Event], output_rate: int | None = None) -> None:
    """The ordering every transport relies on (see docs/conversation.md)."""
    open_speech = 0
    stopped_without_final = 0
    replies: dict[str, str] = {}  # reply_id -> state: started | done | interrupted
    finals = 0
    for i, e in enumerate(events):
        where = f"event {i} ({e.type}) in {[x.type for x in events]}"
        if e.type == "speech_started":
            assert open_speech == 0, where
            open_speech = 1
        elif e.type == "transcript_partial":
            assert open_speech == 1, where
        elif e.type == "speech_stopped":
            assert open_speech == 1, where
            open_speech = 0
            stopped_without_final += 1
        elif e.type == "transcript_final":
            assert stopped_without_final > 0, where
            stopped_without_final -= 1
            finals += 1
        elif e.type == "reply_started":
            assert e.reply_id not in replies, where
            replies[e.reply_id] = "started"
        elif e.type in ("reply_text_delta", "reply_audio"):
            assert replies.get(e.reply_id) == "started", where
            if e.type == "reply_audio":
                assert len(e.pcm) % 2 == 0 and len(e.pcm) > 0, where
                if output_rate is not None:
                    assert e.sample_rate == output_rate, where
        elif e.type == "reply_done":
            assert replies.get(e.reply_id) == "started", where
            replies[e.reply_id] = "done"
        elif e.type == "interrupted":
            assert replies.get(e.reply_id) in ("started", "done"), where
            replies[e.reply_id] = "interrupted"
        elif e.type == "metrics":
            assert replies.get(e.reply_id) in ("done", "interrupted"), where


STAGE_ORDER = ("eos_to_silence_ms", "eos_to_transcript_ms", "eos_to_created_ms", "eos_to_prefilled_ms",
               "eos_to_first_token_ms", "eos_to_first_piece_ms", "eos_to_first_piece_audio_ms")  # fmt: skip


def check_stages(timings: dict[str, float]) -> None:
    """A heard reply's stage timings (Reply.stage_timings) are all there and in the order the path runs them;
    its first audio comes out at the endpoint or when synthesised, whichever is later (a few ms of slack for
    the event loop)."""
    missing = [k for k in (*STAGE_ORDER, "eos_to_endpoint_ms", "eos_to_first_audio_ms") if k not in timings]
    assert not missing, (missing, timings)
    values = [timings[k] for k in STAGE_ORDER]
    assert values == sorted(values), timings
    assert 0 < timings["eos_to_silence_ms"], timings  # the silence work starts after the end of speech
    released = max(timings["eos_to_endpoint_ms"], timings["eos_to_first_piece_audio_ms"])
    assert released - 1.0 <= timings["eos_to_first_audio_ms"] <= released + 250.0, timings
