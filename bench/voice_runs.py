"""One question through one system, timed as the user would feel it (used by bench/voice.py).

Three ways in:
* `stream_direct`: 20 ms frames pushed in real time (wall-clock paced) into a fresh `Conversation`;
* `stream_realtime`: the same frames as `input_audio_buffer.append` events over `/v1/realtime` to a
  `specvoice serve` server, timed on the client side of the socket;
* `sequential`: the baseline, `specvoice reply`'s streamed path (app/turn.py) with the short-window
  decoder, started after a fixed silence timer found by the same Silero VAD.

"eos" is the wall-clock instant the frame holding the last voiced sample was sent. A *false endpoint* is an
end of turn whose last voiced position (speech_stopped's audio_ms) lies before the real end of the question;
a *fragment reply heard* is reply audio that arrived while the user still had words to say.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.voice_questions import RATE, SpokenQuestion

CHUNK_MS = 20
FALSE_ENDPOINT_MARGIN_MS = 300  # an endpoint this far before the real end of speech closed the turn early
AFTER_AUDIO_S = 0.25  # keep streaming this long after the first reply audio (lets the metrics arrive)


@dataclass
class Outcome:
    eos_to_audio_ms: float | None = None
    endpoint_to_audio_ms: float | None = None
    eos_to_endpoint_ms: float | None = None  # the wait: end of speech -> the endpoint the reply followed
    false_endpoints: int = 0  # turns closed before the user had finished
    fragment_heard: bool = False  # reply audio arrived while the user still had words to say
    transcript: str = ""
    wasted_preemptive: int | None = None  # preemptive replies dropped (None: the conversation does not say)
    wasted_preemptive_ms: float | None = None  # LLM time those replies had spent
    wasted_preemptive_tokens: int | None = None
    stages: dict[str, float] = field(default_factory=dict)
    effective: dict[str, Any] = field(default_factory=dict)  # the turn settings the server really used
    endpoints: list[dict[str, Any]] = field(default_factory=list)  # why each turn ended (conv.endpoints)


class Observer:
    """Turns a stream of (timestamped) conversation events into an Outcome; transport-neutral."""

    def __init__(self, q: SpokenQuestion) -> None:
        self.q = q
        self.eos_wall: float | None = None
        self.stops: list[tuple[float, float]] = []  # (audio_ms of the last voiced sample, wall time)
        self.finals: list[str] = []
        self.before_eos: set[str] = set()  # replies first heard while the user was still speaking
        self.first_audio: tuple[str, float] | None = None
        self.metrics: dict[str, dict[str, float]] = {}
        self.got_audio = asyncio.Event()
        self.fragment_heard = False

    def speech_stopped(self, audio_ms: float, now: float) -> None:
        self.stops.append((audio_ms, now))

    def audio(self, reply_id: str, now: float) -> None:
        if reply_id in self.before_eos or self.first_audio is not None:
            return
        if self.eos_wall is None:
            self.fragment_heard = True
            self.before_eos.add(reply_id)
        else:
            self.first_audio = (reply_id, now)
            self.got_audio.set()

    def outcome(self, wasted: tuple[int, float, int] | None) -> Outcome:
        out = Outcome(fragment_heard=self.fragment_heard, transcript=join_finals(self.finals))
        out.false_endpoints = sum(ms < self.q.eos_ms - FALSE_ENDPOINT_MARGIN_MS for ms, _ in self.stops)
        if self.first_audio is not None and self.eos_wall is not None:
            reply_id, heard = self.first_audio
            out.eos_to_audio_ms = round(1000 * (heard - self.eos_wall), 1)
            endpoints = [wall for _, wall in self.stops if wall <= heard]
            if endpoints:
                out.endpoint_to_audio_ms = round(1000 * (heard - endpoints[-1]), 1)
                out.eos_to_endpoint_ms = round(1000 * (endpoints[-1] - self.eos_wall), 1)
            out.stages = self.metrics.get(reply_id, {})
        dropped = [t for rid, t in self.metrics.items() if t.get("discarded")]
        if wasted is None and dropped:
            wasted = (len(dropped), sum(float(t.get("wasted_ms", 0.0)) for t in dropped), 0)
        if wasted is not None:
            out.wasted_preemptive, out.wasted_preemptive_ms = wasted[0], round(wasted[1], 1)
            out.wasted_preemptive_tokens = wasted[2]
        return out


def join_finals(finals: list[str]) -> str:
    """A turn resumed after a false endpoint is re-finalised with the earlier words in front: keep the last."""
    kept = [f for i, f in enumerate(finals) if not any(later.startswith(f) for later in finals[i + 1 :])]
    return " ".join(kept)


def wasted_work(conv: Any) -> tuple[int, float, int] | None:
    """Dropped preemptive replies and the compute they cost, if the conversation keeps count."""
    stats = getattr(conv, "stats", None) or getattr(conv, "metrics", None)
    if callable(stats):
        stats = stats()
    if not isinstance(stats, dict) or "preemptive_discarded" not in stats:
        return None
    # Replies nobody heard: preemptive ones dropped when the user went on inside a pause, and ones dropped
    # after a false end of turn (`unheard_*`, when this build counts them).
    return (
        int(stats["preemptive_discarded"] + stats.get("unheard_discarded", 0)),
        float(stats.get("preemptive_wasted_ms", 0.0) + stats.get("unheard_wasted_ms", 0.0)),
        int(stats.get("preemptive_wasted_tokens", 0) + stats.get("unheard_wasted_tokens", 0)),
    )


async def settled_waste(conv: Any) -> tuple[int, float, int] | None:
    """`wasted_work` once the replies already dropped have stopped (their LLM time is only final then)."""
    settle = getattr(conv, "settle_dropped", None)
    if settle is not None:
        await settle()
    return wasted_work(conv)


async def pace(q: SpokenQuestion, obs: Observer, send, rate: int, wait_s: float) -> None:
    """Send `q` in 20 ms frames at wall-clock pace until the reply is heard (+ a little) or `wait_s`."""
    audio = q.audio if rate == RATE else _resample(q.audio, rate)
    eos = round(q.eos_sample * rate / RATE)
    chunk = rate * CHUNK_MS // 1000
    t0 = time.perf_counter()
    stop_at = None
    last = min(len(audio), eos + int(wait_s * rate))
    for k in range(-(-last // chunk)):
        await asyncio.sleep(max(0.0, t0 + k * CHUNK_MS / 1000 - time.perf_counter()))
        await send(audio[k * chunk : (k + 1) * chunk])
        if obs.eos_wall is None and (k + 1) * chunk >= eos:
            obs.eos_wall = time.perf_counter()
        if obs.got_audio.is_set():
            stop_at = stop_at or time.perf_counter() + AFTER_AUDIO_S
            if time.perf_counter() >= stop_at:
                break


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    from app.audio import resample

    return resample(audio, RATE, rate)


async def stream_direct(assistant: Any, q: SpokenQuestion, conv_config: Any, wait_s: float) -> Outcome:
    """Push `q` in real time through a fresh Conversation; time the events as they come out."""
    from app.conversation import Conversation

    conv = Conversation(assistant, conv_config)
    obs = Observer(q)

    async def read() -> None:
        async for event in conv.events():
            now = time.perf_counter()
            if event.type == "speech_stopped":
                obs.speech_stopped(event.audio_ms, now)
            elif event.type == "transcript_final":
                obs.finals.append(event.text)
            elif event.type == "reply_audio":
                obs.audio(event.reply_id, now)
            elif event.type == "metrics":
                obs.metrics[event.reply_id] = dict(event.timings_ms)

    reader = asyncio.create_task(read())

    async def send(piece: np.ndarray) -> None:
        await conv.push_audio(piece, RATE)

    try:
        await pace(q, obs, send, RATE, wait_s)
        wasted = await settled_waste(conv)  # before cancel(): the user's pauses' cost, not the bench's stop
        await conv.cancel()
    finally:
        await conv.close()
        await reader
    out = obs.outcome(wasted)
    out.effective = _turn_settings(conv.config)
    out.endpoints = _endpoints(conv)
    return out


def _endpoints(conv: Any) -> list[dict[str, Any]]:
    """The conversation's end-of-turn decisions (reason, silence, signals), when it keeps them."""
    return [dict(e) for e in getattr(conv, "endpoints", ())]


def _turn_settings(config: Any) -> dict[str, Any]:
    names = ("endpointing", "turn_detection", "hangover_ms", "max_silence_ms", "eagerness", "preemptive")
    return {n: getattr(config, n) for n in names if hasattr(config, n)}


async def stream_realtime(server: Any, q: SpokenQuestion, wait_s: float, rate: int = 24000) -> Outcome:
    """The same question as a Realtime client would send it: base64 pcm16 frames over the websocket."""
    from websockets.asyncio.client import connect

    obs = Observer(q)
    async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime?model=specvoice", max_size=None) as ws:

        async def receive() -> None:
            async for raw in ws:
                event = json.loads(raw)
                now = time.perf_counter()
                kind = event.get("type")
                if kind == "input_audio_buffer.speech_stopped":
                    obs.speech_stopped(float(event["audio_end_ms"]), now)
                elif kind == "conversation.item.input_audio_transcription.completed":
                    obs.finals.append(event["transcript"])
                elif kind == "response.output_audio.delta":
                    obs.audio(event["response_id"], now)
                elif kind == "error":
                    raise RuntimeError(f"server error: {event['error']}")

        receiver = asyncio.create_task(receive())

        async def send(piece: np.ndarray) -> None:
            if receiver.done():
                receiver.result()  # an error event or a closed socket: stop here
            pcm = (np.clip(piece, -1, 1) * 32767).astype("<i2").tobytes()
            await ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
            )

        conv = _server_conversation(server)
        try:
            await pace(q, obs, send, rate, wait_s)
            conv = _server_conversation(server) or conv
            # The heard reply's stages, read in-process (the Realtime protocol has no metrics event).
            stages = conv.reply_timings() if conv is not None and hasattr(conv, "reply_timings") else {}
            wasted = await settled_waste(conv) if conv is not None else None
            effective = _turn_settings(conv.config) if conv is not None else {}
            endpoints = _endpoints(conv) if conv is not None else []
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
    from app.server.app import wait_for_sessions_to_end

    await wait_for_sessions_to_end(server)  # the next question starts on a server with nothing else open
    out = obs.outcome(wasted)
    out.effective, out.endpoints = effective, endpoints
    if out.eos_to_audio_ms is not None:
        out.stages = stages
    return out


def _server_conversation(server: Any) -> Any:
    """The in-process server's one open conversation (read-only: its settings and its counters)."""
    sessions = list(getattr(server, "sessions", ()))
    return getattr(sessions[0], "conv", None) if len(sessions) == 1 else None


# -- the sequential baseline ---------------------------------------------------------------------------------
class _ShortWindowTranscriber:
    """`reply_to_audio` wants `.transcribe(audio).text`: give it the short-window decoder behind that."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder

    def transcribe(self, audio: np.ndarray) -> Any:
        return self.decoder.decode(audio)


@dataclass
class _SequentialAssistant:
    """The assistant as `reply_to_audio` sees it, with the short-window decoder and the bench's reply cap."""

    transcriber: Any
    voice: Any
    config: Any
    new_session: Any


def sequential_assistant(assistant: Any, max_tokens: int) -> _SequentialAssistant:
    from asr.streaming import ShortWindowDecoder

    config = dataclasses.replace(assistant.config, llm=dataclasses.replace(assistant.config.llm))
    config.llm.max_reply_tokens = max_tokens
    decoder = ShortWindowDecoder(assistant.transcriber.model)
    return _SequentialAssistant(
        _ShortWindowTranscriber(decoder), assistant.voice, config, assistant.new_session
    )


def vad_turns(audio: np.ndarray, threshold: float, hangover_ms: float) -> list[tuple[int, int, int]]:
    """(speech start, last voiced end, endpoint) in samples for each turn a fixed silence timer finds."""
    from asr.vad import FRAME, StreamingVAD

    probs = StreamingVAD().process(audio)
    turns, start, last_voiced = [], None, 0
    for i, p in enumerate(probs):
        end = (i + 1) * FRAME
        if p >= threshold:
            start = i * FRAME if start is None else start
            last_voiced = end
        elif (
            start is not None
            and p < max(threshold - 0.15, 0.01)
            and (end - last_voiced) * 1000 / RATE >= hangover_ms
        ):
            turns.append((start, last_voiced, end))
            start = None
    return turns


def sequential(seq: _SequentialAssistant, q: SpokenQuestion, hangover_ms: float, threshold: float) -> Outcome:
    """Each turn the timer finds is answered by `reply_to_audio` (whole utterance, then streamed reply).
    Its waiting is arithmetic in audio time; its compute runs for real and is timed; one turn at a time."""
    from app.audio import AudioError
    from app.turn import NoSpeech, reply_to_audio

    out, busy_until, transcripts = Outcome(), 0.0, []
    eos_s = q.eos_sample / RATE
    for start, last_voiced, endpoint in vad_turns(q.audio, threshold, hangover_ms):
        if last_voiced / RATE > eos_s + 1.0:
            break  # noise in the tail, not the user
        utterance = q.audio[max(0, start - RATE * 3 // 10) : endpoint]
        began = max(endpoint / RATE, busy_until)
        started = time.perf_counter()
        try:
            result = reply_to_audio(seq, utterance)  # type: ignore[arg-type]
        except (AudioError, NoSpeech):
            continue
        busy_until = began + time.perf_counter() - started
        transcripts.append(result.transcript)
        heard = began + result.timings_ms["tts_first_audio"] / 1000
        if last_voiced / RATE < eos_s - FALSE_ENDPOINT_MARGIN_MS / 1000:
            out.false_endpoints += 1
            out.fragment_heard |= heard < eos_s
            continue
        out.eos_to_audio_ms = round(1000 * (heard - eos_s), 1)
        out.endpoint_to_audio_ms = round(1000 * (heard - endpoint / RATE), 1)
        out.eos_to_endpoint_ms = round(1000 * (endpoint / RATE - eos_s), 1)
        waited = round(1000 * (endpoint / RATE - eos_s), 1)
        t = result.timings_ms
        out.stages = {  # the same stage names as a Conversation's replies (bench/voice_report.py STAGES)
            "eos_to_endpoint_ms": waited,
            "eos_to_transcript_ms": round(waited + t["asr"], 1),
            "eos_to_first_token_ms": round(waited + t["asr"] + t["llm_first_token"], 1),
            "eos_to_first_audio_ms": out.eos_to_audio_ms,
            **t,
        }
        break
    out.transcript = " ".join(transcripts)
    return out
