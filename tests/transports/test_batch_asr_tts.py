"""The shared ASR and TTS lanes under several sessions (app/batch_lane.py AsrLane, PriorityLane): a turn's
final decode and a reply's first piece are not held back by another session's long utterance or long reply,
and concurrent sessions' Whisper decodes run as one batch with the same words. Real Whisper tiny.en and
Piper; the lane's worker is held by a call that waits on an event, so what queues behind it is known."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.media_lanes import AsrLane, PriorityLane
from app.reply_stream import Lane
from asr.streaming import ShortWindowDecoder, StreamingTranscriber, normalize_word
from tts.stream import PieceSynthesizer

LONG = ("I would like to hear about the history of the old railway line that ran along the coast "
        "from the harbour to the mountains, and why it was closed.")
SHORTS = ["What time is it?", "Turn on the lights.", "How is the weather today?"]


def _words(text: str) -> list[str]:
    return [w for w in (normalize_word(x) for x in text.split()) if w]


@pytest.fixture(scope="module")
def decoder(transcriber) -> ShortWindowDecoder:
    return ShortWindowDecoder(transcriber.model)


def _session(decoder: ShortWindowDecoder, audio) -> StreamingTranscriber:
    stream = StreamingTranscriber(decoder)
    stream.append(audio)
    return stream


class _Hold:
    """Occupies a lane's worker until `release()`: the calls queued meanwhile are ordered by the lane alone."""

    def __init__(self, lane: Lane) -> None:
        self.lane, self.started, self.go = lane, threading.Event(), threading.Event()

    async def __aenter__(self) -> _Hold:
        self.task = asyncio.ensure_future(self.lane.run(self._block))
        assert await asyncio.to_thread(self.started.wait, 30)
        return self

    def _block(self) -> None:
        self.started.set()
        self.go.wait(60)

    async def __aexit__(self, *exc) -> None:
        self.go.set()
        await self.task


async def _queued(lane: Lane, n: int) -> None:
    """Yield to the event loop until `n` calls wait in the lane's queue (they are queued by tasks)."""
    for _ in range(1000):
        with lane._ready:
            if len(lane._pending) >= n:
                return
        await asyncio.sleep(0)
    raise AssertionError(f"{n} calls never queued")


async def _finish_order(calls: dict[str, asyncio.Future]) -> list[str]:
    order: list[str] = []
    for name, task in calls.items():
        task.add_done_callback(lambda _t, name=name: order.append(name))
    await asyncio.gather(*calls.values())
    return order


@pytest.mark.parametrize("batch", [False, True], ids=["one-by-one", "batched"])
async def test_a_final_decode_goes_before_another_sessions_partial_decodes(decoder, speak, batch) -> None:
    lane = AsrLane("asr", priorities=True, batch=batch)
    long_talker = _session(decoder, speak(LONG))
    short = _session(decoder, speak(SHORTS[0]))
    async with _Hold(lane):
        calls = {f"partial {i}": asyncio.ensure_future(
            lane.run(long_talker.decode, long_talker.snapshot(), priority=Lane.BACKGROUND)) for i in range(3)}
        await _queued(lane, 3)  # the 3 partials (the hold is running)
        calls["final"] = asyncio.ensure_future(lane.run(short.decode, short.snapshot()))
        await _queued(lane, 4)
    order = await _finish_order(calls)
    assert order[0] == "final", order
    final = calls["final"].result()
    assert _words(final.text) == _words(SHORTS[0])
    assert lane.batched_decodes == 0  # partials run one at a time (a final arriving waits for one at most)


async def test_without_priorities_the_final_waits_in_arrival_order(decoder, speak) -> None:
    """The comparison setting (server.lane_priority = false) really is arrival order: the baseline above."""
    lane = AsrLane("asr", priorities=False, batch=False)
    long_talker, short = _session(decoder, speak(LONG)), _session(decoder, speak(SHORTS[0]))
    async with _Hold(lane):
        calls = {"partial": asyncio.ensure_future(
            lane.run(long_talker.decode, long_talker.snapshot(), priority=Lane.BACKGROUND))}
        await _queued(lane, 1)
        calls["final"] = asyncio.ensure_future(lane.run(short.decode, short.snapshot()))
        await _queued(lane, 2)
    assert await _finish_order(calls) == ["partial", "final"]


async def test_concurrent_sessions_finals_run_as_one_batch_with_the_same_words(decoder, speak) -> None:
    lane = AsrLane("asr")
    sessions = [_session(decoder, speak(text)) for text in SHORTS]
    alone = [decoder.decode(s.snapshot().audio).words for s in sessions]
    async with _Hold(lane):
        tasks = [asyncio.ensure_future(lane.run(s.decode, s.snapshot())) for s in sessions]
        await _queued(lane, len(sessions))
    results = await asyncio.gather(*tasks)
    assert (lane.batches, lane.batched_decodes) == (1, len(SHORTS))
    assert [_words(" ".join(r.words)) for r in results] == [_words(" ".join(w)) for w in alone]
    assert lane.clock.calls == len(SHORTS) + 1  # every decode's wait is counted (and the hold's)
    # a long buffer never rides along with a short one (its encode would hold the short one back)
    long_talker = _session(decoder, speak(LONG))
    async with _Hold(lane):
        tasks = [asyncio.ensure_future(lane.run(s.decode, s.snapshot())) for s in (sessions[0], long_talker)]
        await _queued(lane, 2)
    await asyncio.gather(*tasks)
    assert lane.batches == 1


async def test_a_first_piece_waits_for_at_most_the_piece_being_spoken(voice) -> None:
    lane = PriorityLane("tts")
    synthesizer = PieceSynthesizer(voice, 24000)
    later = ["It ran along the coast for forty miles.", "The line closed in nineteen sixty.",
             "Trains carried fish and timber."]
    async with _Hold(lane):  # stands for the long reply's piece being synthesized now
        calls = {f"later {i}": asyncio.ensure_future(lane.run(synthesizer.synthesize, text, priority=Lane.BACKGROUND))
                 for i, text in enumerate(later)}
        await _queued(lane, len(later))
        calls["first"] = asyncio.ensure_future(lane.run(synthesizer.synthesize, "Sure."))
        await _queued(lane, 1 + len(later))
    order = await _finish_order(calls)
    assert order[0] == "first", order
    assert calls["first"].result().duration_ms > 200


async def test_a_session_with_a_fixed_context_is_decoded_alone_with_its_prompt(decoder, speak) -> None:
    """`StreamingTranscriber(context=...)` (a vocabulary hint) puts the words first in every decode's
    prompt; a prompted decode is never batched with others (their prompts differ), so it runs on its own."""
    lane = AsrLane("asr")
    hinted = StreamingTranscriber(decoder, context="Turn on the lights.")
    hinted.append(speak(SHORTS[1]))
    job = hinted.snapshot()
    assert job.prompt == "Turn on the lights."
    plain = _session(decoder, speak(SHORTS[2]))
    async with _Hold(lane):
        tasks = [asyncio.ensure_future(lane.run(s.decode, j)) for s, j in ((hinted, job), (plain, plain.snapshot()))]
        await _queued(lane, 2)
    results = await asyncio.gather(*tasks)
    assert lane.batches == 0
    assert [_words(r.text) for r in results] == [_words(SHORTS[1]), _words(SHORTS[2])]
