"""One spoken reply: LLM deltas -> segmenter -> Piper, each stage in its own compute lane, with a gate.

A `Reply` buffers its events until it is *confirmed*: a preemptive reply (started at the first silence,
before the turn is known to be over) is generated and synthesised in the background and either played at
once when the turn ends with the same transcript, or dropped without a sound. Once cancelled, a reply
emits nothing more. It also remembers which text went into which stretch of audio, so a barge-in can
be mapped back to the words the listener actually heard.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.events import Event, Metrics, ReplyAudio, ReplyDone, ReplyStarted, ReplyTextDelta, ToolCall
from tts.segmenter import Segmenter
from tts.stream import PieceSynthesizer, SpokenPiece, words_heard

if TYPE_CHECKING:
    from app.tool_turn import ToolPlan

_ids = itertools.count(1)


# Who a lane call is made for: set once per connection (app/server/session.py); asyncio tasks copy it, so
# every call a conversation's tasks make carries it. Unset (one local user): every call is the same tenant.
lane_tenant: contextvars.ContextVar[object] = contextvars.ContextVar("lane_tenant", default=None)
USAGE_HALF_LIFE_S = 10.0


class Lane:
    """A single worker thread: calls on one model run one at a time, off the event loop.

    One thread per model (ASR, LLM, TTS) and per process: conversations share the models, so their heavy
    calls queue here instead of oversubscribing 2 cores, while Piper can still speak piece n while the
    LLM writes piece n+1. Always the same thread, so thread-local state (torch grad mode) is stable.

    Which waiting call runs next: `URGENT` (the default: a reply's steps) before `BACKGROUND` (prefill of
    text nobody is waiting on yet, cut into ~one-chunk calls by `prefill`); then the tenant (connection)
    that has used this lane least lately (a decaying sum of its seconds of work); then arrival order. So a
    client flooding the server with audio or long text waits behind everyone else's next call, and delays
    another session's reply by at most the one call already running.
    """

    URGENT = 0
    BACKGROUND = 1

    def __init__(self, name: str, workers: int = 1) -> None:
        # workers > 1 only for calls that wait on the network (a remote LLM), not on a core.
        self.name, self.workers = name, workers
        self._pending: list[tuple[int, int, object, Callable[[], Any], Future[Any]]] = []
        self._usage: dict[object, tuple[float, float]] = {}  # tenant -> (seconds, when)
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []

    def _used(self, tenant: object, now: float) -> float:
        seconds, when = self._usage.get(tenant, (0.0, now))
        return seconds * 0.5 ** ((now - when) / USAGE_HALF_LIFE_S)

    def _next_job(self) -> tuple[object, Callable[[], Any], Future[Any]]:
        with self._ready:
            while not self._pending:
                self._ready.wait()
            now = time.monotonic()
            job = min(self._pending, key=lambda j: (j[0], self._used(j[2], now), j[1]))
            self._pending.remove(job)
            return job[2], job[3], job[4]

    def _work(self) -> None:
        while True:
            tenant, call, future = self._next_job()
            if not future.set_running_or_notify_cancel():
                continue  # its caller was cancelled before it started
            started = time.monotonic()
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                now = time.monotonic()
                with self._ready:
                    self._usage[tenant] = (self._used(tenant, now) + now - started, now)
                    if len(self._usage) > 256:  # forget tenants whose usage has decayed away
                        for old in [t for t in self._usage if self._used(t, now) < 1e-3]:
                            del self._usage[old]

    async def run(self, fn: Callable[..., Any], *args: Any, priority: int = URGENT) -> Any:
        future: Future[Any] = Future()
        with self._ready:
            while len(self._threads) < self.workers:
                thread = threading.Thread(
                    target=self._work, name=f"specvoice-{self.name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            job = (priority, next(self._order), lane_tenant.get(), functools.partial(fn, *args), future)
            self._pending.append(job)
            self._ready.notify()
        return await asyncio.wrap_future(future)


PREFILL_SLICE_CHARS = 64  # about one 16-token prefill chunk of English text


async def prefill(lane: Lane, session: Any, text: str) -> None:
    """`session.revise(text)`, cut into calls of about one prefill chunk each at BACKGROUND priority, the
    last one URGENT: the end state is exactly one `revise(text)`, but other sessions' calls get in between."""
    cut = PREFILL_SLICE_CHARS
    while cut < len(text) - PREFILL_SLICE_CHARS:
        end = text.rfind(" ", 0, cut)
        end = end if end > cut - PREFILL_SLICE_CHARS else cut
        await lane.run(session.revise, text[:end], priority=Lane.BACKGROUND)
        cut = end + PREFILL_SLICE_CHARS
    await lane.run(session.revise, text)


@dataclass
class Lanes:
    asr: Lane
    llm: Lane
    tts: Lane
    cache: dict[Any, Any] = field(default_factory=dict)  # per-assistant helpers (ASR decoder, voices)
    turn: Lane = field(default_factory=lambda: Lane("turn"))  # Smart Turn (end of turn from audio)


class SessionOps:
    """Every change to one conversation's LLM session, in request order (an asyncio lock, the LLM lane).

    Order matters because the session's discard/truncate act on *the latest* reply: a truncation asked
    for at a barge-in must land before the next reply is prepared, and it does, as the lock is FIFO.
    """

    def __init__(self, session: Any, lane: Lane, spawn: Callable[[Any], asyncio.Task]) -> None:
        self.session, self.lane, self._spawn = session, lane, spawn
        self.lock = asyncio.Lock()
        self.want_text: str | None = None
        self.fed_text: str | None = None
        self._feeder: asyncio.Task | None = None

    def feed(self, text: str) -> None:
        """Prefill the user's words while they speak (latest text wins, one call at a time)."""
        self.want_text = text
        if self._feeder is None or self._feeder.done():
            self._feeder = self._spawn(self._feed_loop())

    async def _feed_loop(self) -> None:
        while (want := self.want_text) is not None and want != self.fed_text:
            async with self.lock:
                if want != self.want_text:  # superseded while waiting (newer words, or a reply took over)
                    continue
                await prefill(self.lane, self.session, want)
            self.fed_text = want

    async def forget(self, reply: Reply) -> None:
        """A reply nobody heard: the session drops it and reopens the user turn it answered."""
        async with self.lock:  # queued behind the generation it stops, ahead of any later reply
            if reply.prepared and reply.tool_response_added:
                # A tool ran (its effect is real): keep the call and its result, and an empty answer.
                await self.lane.run(self.session.truncate_reply, "")
                self.fed_text = None
            elif reply.prepared:
                await self.lane.run(self.session.discard_reply)
                self.fed_text = None

    async def truncate(self, reply: Reply, heard: str) -> None:
        """A reply cut short: the history keeps only what was heard."""
        async with self.lock:
            if reply.prepared:
                await self.lane.run(self.session.truncate_reply, heard)
                self.fed_text = None


def new_reply_id() -> str:
    return f"reply_{next(_ids)}"


def new_call_id() -> str:
    return f"call_{next(_ids)}"


@dataclass(frozen=True)
class ReplyPlan:
    """What one reply may do besides answering aloud: text only (`speak=False`: no TTS at all), and tools.
    `on_call` lets the conversation note the calls (client-side ones wait for `add_tool_output`)."""

    speak: bool = True
    tools: ToolPlan | None = None
    on_call: Callable[[ToolCall], None] | None = None


@dataclass
class Reply:
    """State of one reply; the pipeline (`run_reply`) fills it, the conversation confirms or cancels it."""

    emit_out: Callable[[Event], None]  # the conversation's event queue
    confirmed: bool
    user_text: str | None  # the user turn to close first; None = reply to the history as it stands
    id: str = field(default_factory=new_reply_id)
    preemptive: bool = False
    cancelled: bool = False
    discarded: bool = False  # cancelled before it was ever heard: the session forgets it entirely
    interrupted: bool = False
    prepared: bool = False  # the session holds (part of) this reply: discard/truncate must undo it
    finished: bool = False  # everything generated and synthesised
    cancel_event: threading.Event = field(default_factory=threading.Event)
    pending: list[Event] = field(default_factory=list)
    text: str = ""
    pieces: list[tuple[str, float]] = field(default_factory=list)  # (text, duration ms) in play order
    audio_ms: float = 0.0  # reply audio emitted so far
    first_audio_clock_ms: float | None = None  # input-stream position when the first audio went out
    reported_played_ms: float | None = None  # what the sink says it played (Conversation.played)
    spoken_text: str | None = None
    marks: dict[str, float] = field(default_factory=dict)  # wall-clock instants (perf_counter seconds)
    numbers: dict[str, float] = field(default_factory=dict)  # extra metric values
    metrics_sent: bool = False
    task: asyncio.Task | None = None
    clock_ms: Callable[[], float] = lambda: 0.0  # the conversation's input clock
    prefill_base: int | None = None  # the session's prefill-token count when this reply took it (local LLM)
    tool_response_added: bool = False  # a tool ran and its result is in the session's history
    # Set by confirm() or cancel() / by cancel(): a tool call waits on them (asyncio, on the loop).
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled_signal: asyncio.Event = field(default_factory=asyncio.Event)

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.perf_counter())

    def emit(self, event: Event) -> None:
        if self.cancelled:
            return
        if not self.confirmed:
            self.pending.append(event)
            return
        if isinstance(event, ReplyAudio):
            if self.first_audio_clock_ms is None:
                self.first_audio_clock_ms = self.clock_ms()
                self.mark("first_audio")
            if "tool_result" in self.marks:
                self.mark("first_answer_audio")
            self.audio_ms += event.duration_ms
        self.emit_out(event)

    def confirm(self) -> None:
        """Play it: everything buffered goes out now, in order."""
        if self.confirmed or self.cancelled:
            return
        self.confirmed = True
        self.settled.set()
        self.mark("confirmed")
        pending, self.pending = self.pending, []
        for event in pending:
            self.emit(event)
        if self.finished:
            self.send_metrics()

    def played_ms(self) -> float:
        """Best knowledge of how much audio the listener heard: the sink's report, else the input clock
        (audio plays in real time from the moment it went out), else all of it (no clock at all)."""
        if self.reported_played_ms is not None:
            return min(self.reported_played_ms, self.audio_ms)
        if self.first_audio_clock_ms is None:
            return 0.0
        elapsed = self.clock_ms() - self.first_audio_clock_ms
        return min(self.audio_ms, elapsed) if elapsed > 0 else self.audio_ms

    def heard_text(self) -> str:
        return words_heard(self.pieces, self.played_ms())

    def playing(self, tail_ms: float = 0.0) -> bool:
        """Audio of this reply may still be coming out of the speaker (for the echo guard)."""
        if self.cancelled or not self.confirmed:
            return False
        if not self.finished:
            return True
        if self.reported_played_ms is not None and self.reported_played_ms >= self.audio_ms:
            return False
        if self.first_audio_clock_ms is None:
            return False
        return self.clock_ms() < self.first_audio_clock_ms + self.audio_ms + tail_ms

    def cancel(self) -> None:
        self.cancelled = True
        self.cancel_event.set()
        self.settled.set()
        self.cancelled_signal.set()
        self.pending.clear()

    def timings(self) -> dict[str, float]:
        def since(a: str, b: str) -> float | None:
            if a in self.marks and b in self.marks:
                return round(1000.0 * (self.marks[a] - self.marks[b]), 1)
            return None

        out: dict[str, float | None] = {
            "eos_to_endpoint_ms": since("endpoint", "eos"),
            "eos_to_first_token_ms": since("first_token", "eos"),
            "eos_to_first_audio_ms": since("first_audio", "eos"),
            "endpoint_to_first_token_ms": since("first_token", "endpoint"),
            "endpoint_to_first_audio_ms": since("first_audio", "endpoint"),
            "request_to_first_token_ms": since("first_token", "created"),
            "request_to_first_audio_ms": since("first_audio", "created"),
            "first_piece_synthesis_ms": since("first_piece_audio", "first_piece"),
            # The reply's own path (docs/conversation.md "The preemptive path, stage by stage"): waiting
            # for the session (other LLM work), prefill of what the cache lacks, the first step.
            "reply_lock_wait_ms": since("llm_locked", "created"),
            "reply_prefill_ms": since("prefilled", "llm_locked"),
            "prefilled_to_first_token_ms": since("first_token", "prefilled"),
            **self.stage_timings(),
            "eos_to_tool_call_ms": since("tool_call", "eos"),
            "request_to_tool_call_ms": since("tool_call", "created"),
            "eos_to_first_answer_audio_ms": since("first_answer_audio", "eos"),
            "request_to_first_answer_audio_ms": since("first_answer_audio", "created"),
            "preemptive": 1.0 if self.preemptive else 0.0,
            "audio_ms": round(self.audio_ms, 1),
        }
        out.update(self.numbers)
        return {k: v for k, v in out.items() if v is not None}

    STAGES = ("silence", "transcript", "created", "prefilled", "first_token", "first_piece",
              "first_piece_audio", "endpoint", "first_audio")  # fmt: skip

    def stage_timings(self) -> dict[str, float]:
        """Each stage of the path to the first sound, in ms after the end of speech: the silence work
        starting (VAD), the transcript known, the reply created, its prefill done, its first token, its
        first spoken piece's text, that piece synthesised, the endpoint, the first audio released. A
        preemptive reply is ready before the endpoint when `first_piece_audio` < `endpoint`."""
        if "eos" not in self.marks:
            return {}
        eos = self.marks["eos"]
        return {f"eos_to_{name}_ms": round(1000.0 * (self.marks[name] - eos), 1)
                for name in self.STAGES if name in self.marks}  # fmt: skip

    def send_metrics(self) -> None:
        if not self.metrics_sent and self.confirmed:
            self.metrics_sent = True
            self.emit_out(Metrics(self.id, self.timings()))


async def run_reply(
    reply: Reply,
    session: Any,
    lanes: Lanes,
    llm_lock: asyncio.Lock,
    synthesizer: PieceSynthesizer,
    max_tokens: int,
    sampling: Any,
    plan: ReplyPlan | None = None,
) -> None:
    """Generate, segment and synthesise one reply; emits through the reply's gate.

    With tools (`plan.tools`), the reply first decides call-or-answer and may call one tool (see
    app/tool_turn.py `tool_phase`); the answer that follows the tool's result is generated and spoken as usual."""
    plan = plan or ReplyPlan()
    tools = plan.tools if plan.tools is not None and plan.tools.active else None
    reply.mark("created")
    if reply.confirmed:
        reply.emit_out(ReplyStarted(reply.id))
    else:
        reply.pending.append(ReplyStarted(reply.id))
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    first_piece_done = asyncio.Event()
    speaker = None
    if plan.speak:
        speaker = asyncio.create_task(_speak(reply, pieces, lanes, synthesizer, first_piece_done))
    else:
        first_piece_done.set()  # nothing to wait for: text only
    segmenter = Segmenter()
    try:
        async with llm_lock:
            if reply.cancelled:
                return
            reply.mark("llm_locked")
            reply.prefill_base = _prefill_count(session)
            if reply.user_text is not None:
                await prefill(lanes.llm, session, reply.user_text)
            reply.mark("prefilled")
            answer = True
            if tools is not None:
                from app.tool_turn import tool_phase  # (imports torch; only replies with tools)

                answer = await tool_phase(reply, session, lanes, plan, sampling, pieces)
            if answer and not reply.cancelled:
                # Call syntax never reaches the listener: an answer that starts writing one stops there.
                stop = ("<tool_call>", "<tool_response>") if tools is not None else ()
                await _generate(reply, session, lanes, max_tokens, sampling, stop, segmenter, pieces,
                                first_piece_done, plan.speak)  # fmt: skip
        if plan.speak:
            for piece in segmenter.flush():
                reply.mark("first_piece")
                pieces.put_nowait(piece)
    finally:
        pieces.put_nowait(None)
        if reply.cancelled and speaker is not None:
            speaker.cancel()
    if speaker is not None:
        try:
            await speaker
        except asyncio.CancelledError:
            if not reply.cancelled:
                raise
    if not reply.cancelled:
        reply.finished = True
        reply.emit(ReplyDone(reply.id, reply.text.strip()))
        reply.send_metrics()


async def _generate(
    reply: Reply,
    session: Any,
    lanes: Lanes,
    max_tokens: int,
    sampling: Any,
    stop: tuple[str, ...],
    segmenter: Segmenter,
    pieces: asyncio.Queue[str | None],
    first_piece_done: asyncio.Event,
    speak: bool,
) -> None:
    """The answer, token by token (the caller holds the session's lock)."""
    from app.batch_lane import next_delta  # batched with other replies' steps on a BatchLane

    steps = session.generate(max_tokens=max_tokens, sampling=sampling, cancel=reply.cancel_event, stop=stop)
    try:
        while not reply.cancelled:
            if segmenter.pieces_out and not first_piece_done.is_set():
                # 2 cores: let Piper have them for the first piece (the latency the user hears);
                # the LLM is far ahead of playback anyway.
                await first_piece_done.wait()
            reply.prepared = True  # the first step opens the reply in the session
            delta = await next_delta(lanes.llm, steps)
            if delta is None or reply.cancelled:
                break
            if "first_token" not in reply.marks and reply.prefill_base is not None:
                # What the reply still had to prefill before its first token (incremental prefill caches
                # whole 16-token chunks of the user's words while they speak; the rest, the turn's end and
                # the assistant header come here).
                reply.numbers["prefill_tokens_before_first_token"] = _prefill_count(session) - reply.prefill_base
            reply.mark("first_token")
            if delta.text:
                reply.text += delta.text
                reply.emit(ReplyTextDelta(reply.id, delta.text))
                if speak:
                    for piece in segmenter.push(delta.text):
                        reply.mark("first_piece")  # its text is ready (the speaker may still be busy)
                        pieces.put_nowait(piece)
    finally:
        await lanes.llm.run(steps.close)
    stats = getattr(session, "last_reply", None)
    if stats is not None:
        reply.numbers["tokens"] = reply.numbers.get("tokens", 0.0) + float(stats.generated)
        reply.numbers["llm_generate_ms"] = round(
            reply.numbers.get("llm_generate_ms", 0.0) + 1000.0 * stats.generate_s, 1
        )


def _prefill_count(session: Any) -> int | None:
    """Tokens a local session has prefilled so far (None for a remote one: its server prefills)."""
    if not hasattr(session, "next_token_logits"):
        return None
    return getattr(getattr(session, "stats", None), "prefill_tokens", None)


async def _speak(
    reply: Reply,
    pieces: asyncio.Queue[str | None],
    lanes: Lanes,
    synthesizer: PieceSynthesizer,
    first_piece_done: asyncio.Event,
) -> None:
    try:
        while (piece := await pieces.get()) is not None:
            if reply.cancelled:
                return
            reply.mark("first_piece")
            first = Lane.URGENT if not reply.pieces else Lane.BACKGROUND  # first audio before later pieces
            spoken = await lanes.tts.run(synthesizer.synthesize, piece, priority=first)
            first_piece_done.set()
            if reply.cancelled:
                return
            _emit_piece(reply, spoken)
    finally:
        first_piece_done.set()  # never leave the LLM waiting


def _emit_piece(reply: Reply, spoken: SpokenPiece) -> None:
    reply.mark("first_piece_audio")
    reply.pieces.append((spoken.text, spoken.duration_ms))
    for chunk in spoken.chunks:
        reply.emit(ReplyAudio(reply.id, chunk, spoken.sample_rate))
