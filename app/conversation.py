"""The real-time conversation loop: one async object per user, shared models underneath.

Audio in (any rate) -> 16 kHz -> Silero VAD frame by frame -> the turn state machine (app/turn_state.py):

* speech onset (`min_speech_ms` voiced) opens an utterance (SPEAKING); it is re-decoded every
  `decode_interval_ms` of new audio and the words two decodes agree on are committed (LocalAgreement-2)
  and prefilled into the LLM while the user is still talking;
* at `preemptive_silence_ms` of silence (PAUSED) the end-of-turn signals are measured (app/turn_end.py:
  Smart Turn on the audio, the LLM's P(end of turn) on the words) and a *preemptive* reply starts from the
  transcript of everything heard, buffered, not heard;
* the signals choose the wait (asr/endpointing.py): ~150 ms when both say finished, up to
  `max_silence_ms` when not, graded in between (`hangover_ms` when a signal is late); when the silence reaches it the turn ENDS
  and the preemptive reply plays at once; if the user speaks again first, it is dropped without a sound.

Barge-in, the echo guard and the metrics are described in docs/conversation.md. All heavy calls run in
per-model worker lanes (app/reply_stream.py); the event loop only moves small arrays and flags.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from typing import Any

import numpy as np

from app.audio_input import InputAudio
from app.config import ConversationConfig
from app.conversation_tools import ConversationTools, check_tools_backend
from app.conversation_turns import TurnsAndReplies
from app.events import (
    ErrorEvent,
    Event,
    SpeechStarted,
    TranscriptPartial,
)
from app.reply_stream import Lane, Reply, SessionOps
from app.tool_turn import ToolChoice
from app.tools import ToolRegistry
from app.turn_end import TurnEnd
from app.turn_state import TurnState, Utterance
from asr.endpointing import EAGERNESS, ENDPOINTING
from asr.streaming import ShortWindowDecoder, StreamingTranscriber
from asr.vad import FRAME, FRAME_MS, StreamingVAD
from tts.stream import PieceSynthesizer

log = logging.getLogger(__name__)

RATE = 16000
TURN_DETECTION = ("server_vad", "semantic_vad", None)
ECHO_POLICIES = ("half_duplex", "full_duplex")
HEARD_ALL_MARGIN = RATE // 10  # 100 ms of silence after the last voiced frame


class ConversationClosed(RuntimeError):
    """A call on a conversation after close()."""


class Conversation(TurnsAndReplies, ConversationTools):
    """See docs/architecture.md (API) and docs/conversation.md (behaviour)."""

    def __init__(
        self,
        assistant: Any,
        config: ConversationConfig | None = None,
        tools: ToolRegistry | None = None,
        tool_choice: Any = "auto",
    ) -> None:
        self.assistant = assistant
        self.config = dataclasses.replace(config or assistant.config.conversation)
        _validate(self.config)
        self._init_tools(tools, tool_choice)  # the assistant's tools and this conversation's (ConversationTools)
        self._lanes = assistant.lanes
        decoder = self._lanes.cache.get("decoder")
        if decoder is None:
            decoder = self._lanes.cache["decoder"] = ShortWindowDecoder(assistant.transcriber.model)
        self._decoder: ShortWindowDecoder = decoder
        self._session = assistant.llm.session(system_prompt=self._system_prompt(self._tools))
        if len(self._tools):
            check_tools_backend(self._session)
        self._synth = PieceSynthesizer(self._voice(), self.config.output_sample_rate)
        self._vad = StreamingVAD()
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self._input = InputAudio(FRAME)
        self._clock = 0  # 16 kHz samples received (the conversation's clock)
        self._preroll: deque[np.ndarray] = deque()
        self._onset_frames = 0
        self._muted = False
        self._utterance: Utterance | None = None  # the open one (SPEAKING or PAUSED)
        self._finalizing: Utterance | None = None  # ENDED, its final transcript not out yet
        self._turn_end = TurnEnd(self)
        self._last_utterance: Utterance | None = None
        self._user_prefix = ""  # user text waiting for the next reply (text input, resumed turns)
        self._llm = SessionOps(self._session, self._lanes.llm, self._spawn)
        self._reply: Reply | None = None  # the latest confirmed reply
        self._replies: dict[str, Reply] = {}
        self._closed = False
        self.stats: dict[str, float] = {
            "preemptive_started": 0, "preemptive_used": 0, "preemptive_discarded": 0,
            "preemptive_wasted_ms": 0.0, "preemptive_wasted_tokens": 0,
            "unheard_discarded": 0, "unheard_wasted_ms": 0.0, "unheard_wasted_tokens": 0,
        }  # fmt: skip
        self._stopping: set[asyncio.Task] = set()  # dropped replies still stopping (conversation_turns)
        # The latest end-of-turn decisions: why, after how much silence (ms of audio), the signals seen.
        self.endpoints: deque[dict[str, Any]] = deque(maxlen=32)

    # -- public API ----------------------------------------------------------------------------------
    async def push_audio(self, pcm: np.ndarray | bytes | bytearray | memoryview, sample_rate: int) -> None:
        """Mic audio: float32 in [-1, 1] or int16 ndarray, or int16 little-endian bytes; mono, any rate."""
        self._check_open()
        frames = self._input.frames(pcm, sample_rate)
        n = len(frames)
        if n == 0:
            return
        if self.config.turn_detection is None:
            self._clock += n * FRAME
            self._manual_audio(frames.reshape(-1))
            return
        for frame in frames:
            self._clock += FRAME
            if self._echo_guard_closed():
                self._muted = True
                continue
            if self._muted:  # the mic was closed: what the VAD remembers is stale
                self._muted = False
                self._vad.reset()
                self._preroll.clear()
                self._onset_frames = 0
            prob = float(self._vad.process(frame)[0])
            self._on_frame(frame, prob)

    async def send_text(self, text: str, respond: bool = True) -> None:
        """A typed user turn (bots); replies unless respond=False (then it waits for respond())."""
        self._check_open()
        text = text.strip()
        if not text:
            raise ValueError("send_text needs some text")
        self._interrupt_live()
        self._user_prefix = f"{self._user_prefix} {text}".strip()
        if respond:
            self._start_reply()
        else:
            self._llm.feed(self._user_prefix)

    async def commit(self) -> str:
        """End the user turn now (manual turn detection, or to force it); returns the final transcript."""
        self._check_open()
        u = self._utterance
        if u is None:
            self._emit(ErrorEvent("there is no uncommitted user audio to commit", "input_audio_buffer_empty"))
            return ""
        self._close_utterance(u)
        return await self._finish_turn(u)

    async def clear_audio(self) -> None:
        """Drop the uncommitted user audio (and anything prepared from it)."""
        self._check_open()
        u, self._utterance = self._utterance, None
        if u is not None:
            self._drop_silence_work(u)
            u.to(TurnState.DROPPED)
            if self._llm.fed_text:
                self._llm.feed(self._user_prefix)
        self._preroll.clear()
        self._onset_frames = 0
        self._vad.reset()

    async def respond(self, tool_choice: Any = None, audio: bool | None = None) -> None:
        """Reply to the history as it stands (after send_text(respond=False) or auto_respond=False).

        `tool_choice` ("auto" / "none" / "required" / {"type": "function", "name": N}) and `audio`
        (False: text only) apply to this reply only."""
        self._check_open()
        options: dict[str, Any] = {}
        if tool_choice is not None:
            options["tool_choice"] = ToolChoice.parse(tool_choice)
            options["tool_choice"].specs(self._tools)
        if audio is not None:
            options["audio"] = bool(audio)
        if self._reply is not None and not self._reply.cancelled and not self._reply.finished:
            self._emit(ErrorEvent("a reply is already in progress; cancel() it first", "reply_in_progress"))
            return
        self._start_reply()
        if options and self._reply is not None:
            self._reply_options[self._reply.id] = options

    async def cancel(self) -> None:
        """Stop the reply in progress (-> Interrupted with the words already heard)."""
        self._check_open()
        if self._utterance is not None:
            self._drop_silence_work(self._utterance)
        self._interrupt_live()

    def played(self, reply_id: str, audio_ms: float) -> None:
        """The sink reports how much of a reply it really played (Realtime truncate, Twilio marks)."""
        reply = self._replies.get(reply_id)
        if reply is not None and audio_ms >= 0:
            reply.reported_played_ms = max(reply.reported_played_ms or 0.0, float(audio_ms))

    def update(self, **changes: Any) -> None:
        """Change turn-taking settings mid-conversation (e.g. turn_detection=None for manual commit)."""
        self._check_open()
        unknown = set(changes) - {f.name for f in dataclasses.fields(ConversationConfig)}
        if unknown:
            raise ValueError(f"unknown conversation setting(s): {', '.join(sorted(unknown))}")
        fixed = {"output_sample_rate", "system_prompt", "voice"} & set(changes)
        if fixed:
            raise ValueError(f"{', '.join(sorted(fixed))}: fixed when the conversation starts")
        config = dataclasses.replace(self.config, **changes)
        _validate(config)
        if config.turn_detection != self.config.turn_detection and self._utterance is not None:
            self._drop_silence_work(self._utterance)
        self.config = config

    async def events(self):
        """Typed events (app/events.py) until close()."""
        while (event := await self._queue.get()) is not None:
            yield event

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for reply in self._replies.values():
            reply.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._replies.clear()  # replies hold our callbacks: drop the cycle so the KV cache is freed now
        self._reply = None
        self._queue.put_nowait(None)

    async def settle(self) -> None:
        """Wait for the transcription and end-of-turn work already started on the current utterance (not
        for replies).

        Lets a caller that pushes audio faster than real time (tests, file streaming) keep ASR and the
        end-of-turn signals in step with the audio by awaiting work instead of sleeping."""
        while True:
            pending = [t for u in (self._utterance, self._finalizing) if u is not None for t in u.pending()]
            if not pending:
                return
            await asyncio.wait(pending)

    def reply_timings(self) -> dict[str, float]:
        """The latest confirmed reply's timings so far (what its `metrics` event will carry, stage by
        stage: docs/conversation.md "Metrics"); {} before the first reply. For benchmarks and consoles
        that cannot wait for the reply to finish."""
        reply = self._reply
        return reply.timings() if reply is not None and reply.confirmed else {}

    @property
    def turn_state(self) -> TurnState | None:
        """State of the latest user utterance (None before the first one)."""
        u = self._utterance or self._finalizing or self._last_utterance
        return u.state if u is not None else None

    @property
    def session(self) -> Any:
        """The LLM session (history) of this conversation."""
        return self._session

    # -- input side ----------------------------------------------------------------------------------
    def _echo_guard_closed(self) -> bool:
        """half_duplex: the mic is ignored only while the assistant's voice is actually coming out of the
        speaker (from its first reply audio until it has played, + echo_tail_ms). Before any reply audio
        (the reply still being prepared) the user is heard; a voiced run that began before the playback
        is the user too."""
        if self.config.echo_policy != "half_duplex" or self._utterance is not None or self._onset_frames:
            return False
        reply = self._reply
        if reply is None or reply.cancelled or reply.first_audio_clock_ms is None:
            return False
        return reply.playing(tail_ms=self.config.echo_tail_ms)

    def _on_frame(self, frame: np.ndarray, prob: float) -> None:
        cfg = self.config
        voiced = prob >= cfg.vad_threshold
        silent = prob < max(cfg.vad_threshold - 0.15, 0.01)
        u = self._utterance
        if u is None:
            self._preroll.append(frame)
            while len(self._preroll) * FRAME_MS > cfg.preroll_ms + cfg.min_speech_ms:
                self._preroll.popleft()
            self._onset_frames = self._onset_frames + 1 if voiced else 0
            if self._onset_frames * FRAME_MS >= cfg.min_speech_ms:
                self._start_utterance()
            return
        u.asr.append(frame)
        u.recent.append(frame)
        if voiced or (not silent and u.state is TurnState.SPEAKING):
            u.last_voiced_end, u.eos_wall = self._clock, time.perf_counter()
            if u.state is TurnState.PAUSED:  # the user resumed: whatever this silence prepared is stale
                self._drop_silence_work(u)
                u.to(TurnState.SPEAKING)
            self._maybe_decode(u)
            return
        if u.state is TurnState.SPEAKING:
            u.to(TurnState.PAUSED)
        silence_ms = (self._clock - u.last_voiced_end) * 1000.0 / RATE
        if u.silence is None and silence_ms >= cfg.preemptive_silence_ms:
            self._start_silence_work(u)
        reason = self._turn_end.endpoint(u, silence_ms)
        if reason is not None:
            log.debug("endpoint (%s) after %.0f ms of silence, transcript %r", reason, silence_ms,
                      u.asr.final_text())
            u.endpoint_reason = reason
            self._close_utterance(u)
            self._spawn(self._finish_turn(u))

    def _start_utterance(self) -> None:
        onset = self._clock - self._onset_frames * FRAME
        start = self._clock - len(self._preroll) * FRAME
        u = Utterance(self._transcriber(), start, self._clock, time.perf_counter())
        for frame in self._preroll:
            u.asr.append(frame)
            u.recent.append(frame)
        self._preroll.clear()
        self._onset_frames = 0
        self._utterance = self._last_utterance = u
        if self._finalizing is not None and self._finalizing.state is TurnState.ENDED:
            self._finalizing.to(TurnState.RESUMED)
        self._emit(SpeechStarted(round(onset * 1000.0 / RATE, 1)))
        if self.config.barge_in:
            self._interrupt_live()
        self._maybe_decode(u)

    def _transcriber(self) -> StreamingTranscriber:
        """A new utterance's recogniser, primed with the tools' vocabulary (their example sentences and the
        names their data holds: ToolRegistry.speech_prompt) when this conversation has tools."""
        context = (self._tools.speech_prompt() or "") if len(self._tools) else ""
        return StreamingTranscriber(self._decoder, context=context)

    def _manual_audio(self, audio: np.ndarray) -> None:
        """turn_detection=None: every sample belongs to the user turn until commit() or clear_audio()."""
        u = self._utterance
        if u is None:
            u = self._utterance = self._last_utterance = Utterance(
                self._transcriber(),
                self._clock - audio.size,
                self._clock,
                time.perf_counter(),
            )
        u.asr.append(audio)
        u.last_voiced_end, u.eos_wall = self._clock, time.perf_counter()
        self._maybe_decode(u)

    # -- transcription ---------------------------------------------------------------------------------
    def _maybe_decode(self, u: Utterance) -> None:
        if u.decode_task is not None or u.state is not TurnState.SPEAKING or u is not self._utterance:
            return
        if (u.asr.samples - u.asr.last_decoded_end) * 1000.0 / RATE >= self.config.decode_interval_ms:
            u.decode_task = self._spawn(self._decode_partial(u))

    async def _decode_partial(self, u: Utterance) -> None:
        job = u.asr.snapshot()
        result = await self._lanes.asr.run(u.asr.decode, job, priority=Lane.BACKGROUND)  # finals go first
        u.decode_task = None
        if u is not self._utterance or self._closed:
            return
        partial = u.asr.apply(job, result)
        self._emit(TranscriptPartial(partial.committed, partial.tentative))
        if partial.new_words and u.silence is None:
            self._llm.feed(f"{self._user_prefix} {partial.committed}".strip())
        self._maybe_decode(u)

    async def _decode_now(self, u: Utterance) -> str:
        """Decode everything heard so far; the transcript the turn (and its reply) will use."""
        job = u.asr.snapshot()
        started = time.perf_counter()
        result = await self._lanes.asr.run(u.asr.decode, job)
        u.marks["asr_final_ms"] = round(1000.0 * (time.perf_counter() - started), 1)
        u.asr.apply(job, result)
        return f"{self._user_prefix} {u.asr.final_text(job, result)}".strip()

    def _heard_all(self, u: Utterance) -> bool:
        """The latest partial decode heard the speech and some silence after it (a decode that ends right
        at the VAD's last voiced frame often loses the last word's tail: "capital of France" -> "capital
        of"), so its text is the turn's transcript."""
        job = u.asr.last_job
        return job is not None and u.start_sample + job.end >= u.last_voiced_end + HEARD_ALL_MARGIN

    def _voice(self) -> Any:
        """The assistant's voice, or another one loaded once per process and shared (config `voice`)."""
        source = self.config.voice
        if not source:
            return self.assistant.voice
        voice = self._lanes.cache.get(("voice", source))
        if voice is None:
            from app.store import fetch
            from tts.piper_voice import Voice

            tts = self.assistant.config.tts
            path = fetch(source, offline=self.assistant.config.models.offline, progress=False)
            if path.is_dir():
                path = next(iter(sorted(path.rglob("*.onnx"))), path)
            voice = self._lanes.cache[("voice", source)] = Voice(path, tts.length_scale, tts.speaker)
        return voice

    # -- plumbing ------------------------------------------------------------------------------------
    def _clock_ms(self) -> float:
        return self._clock * 1000.0 / RATE

    def _emit(self, event: Event) -> None:
        if not self._closed:
            self._queue.put_nowait(event)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._closed:
            log.error("conversation task failed", exc_info=exc)
            self._emit(ErrorEvent(f"{type(exc).__name__}: {exc}", "internal_error"))

    def _check_open(self) -> None:
        if self._closed:
            raise ConversationClosed("the conversation is closed")


def _validate(config: ConversationConfig) -> None:
    if config.turn_detection not in TURN_DETECTION:
        raise ValueError(f"turn_detection must be one of {TURN_DETECTION}, got {config.turn_detection!r}")
    if config.echo_policy not in ECHO_POLICIES:
        raise ValueError(f"echo_policy must be one of {ECHO_POLICIES}, got {config.echo_policy!r}")
    if config.endpointing not in ENDPOINTING:
        raise ValueError(f"endpointing must be one of {ENDPOINTING}, got {config.endpointing!r}")
    if config.eagerness not in EAGERNESS:
        raise ValueError(f"eagerness must be one of {EAGERNESS}, got {config.eagerness!r}")
    if config.output_sample_rate <= 0:
        raise ValueError("output_sample_rate must be positive")
    if not 0.0 < config.vad_threshold < 1.0:
        raise ValueError("vad_threshold must be between 0 and 1")
    for name in (
        "hangover_ms",
        "min_speech_ms",
        "preemptive_silence_ms",
        "decode_interval_ms",
        "preroll_ms",
        "echo_tail_ms",
    ):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must not be negative")
    if not 0 < config.max_silence_ms <= 60_000:
        raise ValueError(f"max_silence_ms must be between 1 and 60000, got {config.max_silence_ms}")
