"""The LLM lane with continuous batching: concurrent conversations' reply steps share one forward.

`BatchLane` is a `Lane` (one worker thread, the same fairness for every ordinary call: prefill slices,
end-of-turn probes, discard/truncate) plus `step(generation)`: the next reply delta of a local session's
`Generation`. Steps asked for by several conversations are gathered into ONE lane call that runs
`llm.batch.step_together` — one forward for all of them — so N replies cost about one decode step each
instead of N. That call is queued like any URGENT call, under its own tenant (`BATCH_TENANT`), so a
conversation's own urgent call (the last prefill slice of a turn that just ended) still gets in between
two batched steps: it waits for at most one forward.

Gathering: after a batched step its replies come back for the next one within a moment (the event loop
hands the delta on and asks again); the next batched call waits up to `gather_s` for those that are still
running, so a batch does not split into staggered single steps. A reply that pauses (run_reply waits for
the first piece's audio) misses one batch and joins the next.

`next_delta(lane, steps)` is the one call sites use: batched on a `BatchLane` with a local generation,
else `lane.run(next, steps, None)` (a remote backend's replies, a plain lane).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from app.reply_stream import Lane, lane_tenant

log = logging.getLogger(__name__)
BATCH_TENANT = "batched-steps"  # the tenant the shared step calls are accounted to
GATHER_S = 0.01


class LaneClock:
    """Counters of one lane, for `/healthz` and `bench serve`: calls, seconds waited in the queue and
    seconds run (cumulative, so a reader takes differences), and the last 512 waits (percentiles)."""

    def __init__(self) -> None:
        self.calls = 0
        self.wait_s = 0.0
        self.busy_s = 0.0
        self.recent: collections.deque[float] = collections.deque(maxlen=512)
        self._lock = threading.Lock()

    def record(self, wait_s: float, busy_s: float) -> None:
        with self._lock:
            self.calls += 1
            self.wait_s += wait_s
            self.busy_s += busy_s
            self.recent.append(wait_s)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            waits = sorted(self.recent)
        pick = (lambda q: round(1000 * waits[min(len(waits) - 1, int(q * len(waits)))], 1)) if waits else None
        return {"calls": self.calls, "wait_s": round(self.wait_s, 3), "busy_s": round(self.busy_s, 3),
                "recent_wait_p50_ms": pick(0.5) if pick else None,
                "recent_wait_p95_ms": pick(0.95) if pick else None}  # fmt: skip


class TimedLane(Lane):
    """A `Lane` that records how long each call waited for the worker and how long it ran (`clock`)."""

    def __init__(self, name: str, workers: int = 1) -> None:
        super().__init__(name, workers)
        self.clock = LaneClock()
        self.urgent = LaneClock()  # the calls their callers asked to run URGENT (someone waits on them)

    async def run(self, fn: Any, *args: Any, priority: int = Lane.URGENT) -> Any:
        return await self._timed_run(fn, args, priority, priority)

    async def _timed_run(self, fn: Any, args: tuple, priority: int, asked: int) -> Any:
        """Run at `priority`; account the call as `asked` (what the caller asked for)."""
        submitted = time.perf_counter()
        clocks = (self.clock, self.urgent) if asked == Lane.URGENT else (self.clock,)

        def timed() -> Any:
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                for clock in clocks:
                    clock.record(started - submitted, time.perf_counter() - started)

        return await Lane.run(self, timed, priority=priority)


class BatchLane(TimedLane):
    def __init__(self, name: str, model: Any, *, chunk: int | None = None, gather_s: float = GATHER_S) -> None:
        from llm.session import CHUNK

        super().__init__(name, workers=1)
        self.steps_clock = LaneClock()  # per reply step: from asking to its batched forward's start
        self.tokens = 0  # tokens handed to replies (all sessions together)
        self.model, self.chunk, self.gather_s = model, chunk or CHUNK, gather_s
        self._waiting: dict[Any, Future[Any]] = {}  # generation -> its caller's future, in arrival order
        self._expected: set[int] = set()  # ids of the last batch's replies that will likely ask again
        self._cond = threading.Condition()
        self._queued = False  # a batched call is in the lane's queue and has not started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self.forwards: list[Any] = []  # `ForwardRecord`s of the last 1000 batched forwards (benchmarks)

    async def step(self, generation: Any) -> Any:
        """The generation's next delta, or None when it has ended (as `next(generation, None)`)."""
        future: Future[Any] = Future()
        future.asked_at = time.perf_counter()  # type: ignore[attr-defined]
        with self._cond:
            if generation in self._waiting:
                raise RuntimeError("this reply already waits for a step")
            self._waiting[generation] = future
            self._cond.notify_all()
        self._loop = asyncio.get_running_loop()
        self._ensure_call()
        return await asyncio.wrap_future(future)

    def _ensure_call(self) -> None:
        """Queue one batched call unless one is queued already (event-loop thread only)."""
        with self._cond:
            if self._queued or not self._waiting:
                return
            self._queued = True
        context = contextvars.copy_context()
        context.run(lane_tenant.set, BATCH_TENANT)
        task = self._loop.create_task(self.run(self._batched_step), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug: say so, never leave callers hanging
            log.error("batched step failed", exc_info=task.exception())

    def _batched_step(self) -> None:
        """Runs on the lane's worker: one forward for every reply waiting for a step."""
        from llm.batch import step_together

        with self._cond:
            self._queued = False
            deadline = time.monotonic() + self.gather_s
            while not self._expected <= {id(g) for g in self._waiting}:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [(g, f) for g, f in self._waiting.items() if f.set_running_or_notify_cancel()]
            self._waiting.clear()
        generations = [g for g, _ in batch]
        started = time.perf_counter()
        try:
            outcomes, record = step_together(self.model, generations, self.chunk)
        except BaseException as exc:  # step_together catches the replies' errors; this would be a bug
            for _, future in batch:
                future.set_exception(exc)
            raise
        busy = time.perf_counter() - started
        for _, future in batch:
            asked = getattr(future, "asked_at", started)
            self.steps_clock.record(started - asked, busy)
        if record is not None:
            self.forwards = [*self.forwards[-999:], record]
        again = []
        expected = set()
        for (generation, future), outcome in zip(batch, outcomes, strict=True):
            if outcome.error is not None:
                future.set_exception(outcome.error)
            elif outcome.done:
                future.set_result(None)
            elif outcome.delta is None:
                again.append((generation, future))  # prefill chunk or no text yet: it needs another forward
            else:
                expected.add(id(generation))
                self.tokens += len(outcome.delta.token_ids)
                future.set_result(outcome.delta)
        with self._cond:
            self._expected = expected | {id(g) for g, _ in again}
            for generation, future in again:
                self._waiting[generation] = _RunningFuture(future)
        if self._waiting and self._loop is not None:
            self._loop.call_soon_threadsafe(self._ensure_call)


class _RunningFuture:
    """A caller's future already marked running, waiting again for another forward."""

    def __init__(self, future: Future[Any]) -> None:
        self.future = future
        self.asked_at = time.perf_counter()

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, result: Any) -> None:
        self.future.set_result(result)

    def set_exception(self, exc: BaseException) -> None:
        self.future.set_exception(exc)


async def next_delta(lane: Lane, steps: Any) -> Any:
    """The next delta of a reply's steps, or None when it has ended; batched on a `BatchLane`."""
    from llm.generation import Generation

    if isinstance(lane, BatchLane) and isinstance(steps, Generation) and steps.session.model is lane.model:
        return await lane.step(steps)
    return await lane.run(next, steps, None)


def lane_stats(lanes: Any) -> dict[str, Any]:
    """Counters of an assistant's lanes (`/healthz` "lanes"): per lane calls / queue wait / busy seconds;
    for a batching LLM lane also its reply steps' waits, tokens handed out and batched forwards."""
    out: dict[str, Any] = {}
    for name in ("asr", "llm", "tts"):
        lane = getattr(lanes, name, None)
        clock = getattr(lane, "clock", None)
        if clock is not None:
            out[name] = clock.snapshot()
        if name != "llm" and getattr(lane, "urgent", None) is not None:
            out[f"{name}_urgent"] = lane.urgent.snapshot()  # asr: final decodes; tts: first pieces
    from app.media_lanes import AsrLane

    asr = getattr(lanes, "asr", None)
    if isinstance(asr, AsrLane) and "asr" in out:
        out["asr"].update(batches=asr.batches, batched_decodes=asr.batched_decodes)
    llm = getattr(lanes, "llm", None)
    if isinstance(llm, BatchLane):
        forwards = list(llm.forwards)
        out["llm_steps"] = {**llm.steps_clock.snapshot(), "tokens": llm.tokens,
                            "recent_forwards": len(forwards),
                            "recent_mean_rows": round(sum(f.rows for f in forwards) / len(forwards), 2)
                            if forwards else None}  # fmt: skip
    return out
