"""The ASR and TTS lanes: what goes first when several sessions wait for Whisper or Piper.

One worker thread per model is shared by every session (a second decode at once would only split the same
cores), so what matters is the order of the waiting calls: a turn's final decode before partial decodes, a
reply's first piece before other replies' later pieces (docs/scaling.md, 'ASR and TTS under load').
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from app.batch_lane import TimedLane
from app.reply_stream import Lane


class PriorityLane(TimedLane):
    """The ASR or TTS lane: a `TimedLane` whose callers mark what can wait. A partial decode (the user is
    still speaking) runs `BACKGROUND`, so any session's final decode (a turn just ended: a reply waits on
    it) goes first; a reply's later pieces run `BACKGROUND`, so another reply's first piece (the latency a
    user hears) goes first, while the audio already sent keeps the later reply's listener busy. Within a
    priority the lane's tenant fairness interleaves sessions. `priorities=False` treats every call as
    URGENT (arrival and tenant order only, as before; `server.lane_priority = false`, for comparisons)."""

    def __init__(self, name: str, priorities: bool = True) -> None:
        super().__init__(name, workers=1)
        self.priorities = priorities

    async def run(self, fn: Any, *args: Any, priority: int = Lane.URGENT) -> Any:
        return await self._timed_run(fn, args, priority if self.priorities else Lane.URGENT, priority)


MAX_ASR_BATCH = 8
ASR_COMPANION_STRETCH = 1.5  # a companion's audio may be this much longer than the head's (+ 1 s)


@dataclass(eq=False)
class _Decode:
    """One session's pending Whisper decode on the `AsrLane`."""

    transcriber: Any  # asr.streaming.StreamingTranscriber (its decoder is shared by every session)
    job: Any  # asr.streaming.DecodeJob
    priority: int  # the one it runs at
    asked: int  # the one its caller asked for (accounting)
    submitted: float = field(default_factory=time.perf_counter)
    future: Future[Any] = field(default_factory=Future)


class AsrLane(PriorityLane):
    """The ASR lane, batching final decodes: when the worker reaches a session's URGENT decode (chosen by
    priority and tenant fairness, as on any lane), the other sessions' short URGENT decodes waiting ride
    along in ONE batched encode + generate (`ShortWindowDecoder.decode_many`; at most `MAX_ASR_BATCH`, none
    much longer than the chosen one, so it never waits for a long buffer's encode). Every decode still
    queues its own lane call; one already decoded as a companion is withdrawn. Partial decodes
    (BACKGROUND) run one at a time: batched, they made a longer unit of work that a final arriving
    meanwhile had to wait for (measured: bench/lanes.py). `batch=False`: one decode per call
    (`server.asr_batch = false`, for comparisons)."""

    def __init__(self, name: str, priorities: bool = True, batch: bool = True) -> None:
        super().__init__(name, priorities)
        self.batch = batch
        self.batches = 0  # batched calls with 2+ decodes, and the decodes in them (benchmarks)
        self.batched_decodes = 0
        self._decodes: list[_Decode] = []
        self._decodes_lock = threading.Lock()

    async def run(self, fn: Any, *args: Any, priority: int = Lane.URGENT) -> Any:
        item = self._as_decode(fn, args, priority)
        if item is None:
            return await super().run(fn, *args, priority=priority)
        with self._decodes_lock:
            self._decodes.append(item)
        call = asyncio.ensure_future(Lane.run(self, self._decode_from, item, priority=item.priority))
        try:
            return await asyncio.wrap_future(item.future)
        finally:
            if not call.done():
                call.cancel()  # decoded as another call's companion (or abandoned): its own call is not needed
            with self._decodes_lock:
                if item in self._decodes:
                    self._decodes.remove(item)

    def _as_decode(self, fn: Any, args: tuple, priority: int) -> _Decode | None:
        from asr.streaming import DecodeJob, ShortWindowDecoder, StreamingTranscriber

        if not self.batch or getattr(fn, "__func__", None) is not StreamingTranscriber.decode or len(args) != 1:
            return None
        transcriber, job = fn.__self__, args[0]
        if not isinstance(job, DecodeJob) or not isinstance(transcriber.decoder, ShortWindowDecoder):
            return None
        if not ShortWindowDecoder.batchable(job.audio, job.prompt, job.timestamps, transcriber.decoder.pad_s):
            return None
        return _Decode(transcriber, job, priority if self.priorities else Lane.URGENT, priority)

    def _decode_from(self, head: _Decode) -> None:
        """Runs on the worker: `head` and its companions in one batch (nothing if `head` is done already)."""
        with self._decodes_lock:
            if head not in self._decodes:
                return
            longest = ASR_COMPANION_STRETCH * head.job.audio.size + 16000
            companions = sorted(
                (d for d in self._decodes if d is not head and d.transcriber.decoder is head.transcriber.decoder
                 and d.priority == Lane.URGENT and d.job.audio.size <= longest),
                key=lambda d: d.submitted,
            )[: MAX_ASR_BATCH - 1] if head.priority == Lane.URGENT else []  # fmt: skip
            batch = [head, *companions]
            for item in batch:
                self._decodes.remove(item)
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not batch:
            return
        started = time.perf_counter()
        try:
            if len(batch) == 1:
                results = [batch[0].transcriber.decode(batch[0].job)]
            else:
                results = batch[0].transcriber.decoder.decode_many([item.job.audio for item in batch])
        except BaseException as exc:
            for item in batch:
                item.future.set_exception(exc)
            return
        busy = time.perf_counter() - started
        if len(batch) > 1:
            self.batches += 1
            self.batched_decodes += len(batch)
        for item, result in zip(batch, results, strict=True):
            self.clock.record(started - item.submitted, busy)
            if item.asked == Lane.URGENT:
                self.urgent.record(started - item.submitted, busy)
            item.future.set_result(result)
