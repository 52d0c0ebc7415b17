"""`specvoice bench voice`: how long the user waits after they stop talking, streaming vs sequential.

Spoken questions (Piper, the real voice; some with a natural ~400 ms mid-sentence pause) are streamed in
real time (20 ms chunks, wall-clock paced) through the Conversation API. Measured per question:

* eos -> audio: from the wall-clock instant the last voiced sample was pushed to the first reply audio;
* endpoint -> audio: from the endpoint decision (the `speech_stopped` event) to the first reply audio;
* WER of the streaming final transcript, and of an offline (whole-clip, 30 s window) transcription;
* false cut-ins: the assistant starts talking before the user has finished a paused question.

The sequential baseline uses the same models and the same questions in the same run: it waits for a
fixed VAD hangover, transcribes the whole utterance, generates the whole reply, synthesises it whole.
Its waiting is arithmetic (hangover in audio time) and its compute is run and timed for real.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16000
CHUNK_MS = 20
PAUSE_MS = 400
PLAIN = [
    ("What time is it?",),
    ("What is the capital of France?",),
    ("How many legs does a spider have?",),
    ("Why is the sky blue?",),
    ("Can you recommend a good book to read on a rainy afternoon?",),
    ("Tell me a fun fact about octopuses.",),
    ("What should I cook for dinner tonight if I only have eggs, rice and some vegetables?",),
    ("How far away is the moon from the earth?",),
]
PAUSED = [
    ("I was wondering,", "what is the tallest mountain in the world?"),
    ("Could you tell me", "how to make a cup of green tea?"),
    ("If I leave at noon,", "when will I arrive in Boston?"),
    ("What is the difference between", "a frog and a toad?"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="4 questions instead of 12 (smoke run)")
    parser.add_argument("--max-tokens", type=int, default=32, help="reply length cap for both systems")
    parser.add_argument("--wait-s", type=float, default=8.0, help="give up on a reply after this long")


@dataclass
class Question:
    parts: tuple[str, ...]
    audio: np.ndarray  # 16 kHz float32: lead silence, speech (parts joined by pauses), tail silence
    eos_sample: int  # just after the last voiced sample
    first_part_end: int  # just after the first part (the pause starts here; = eos_sample if no pause)

    @property
    def text(self) -> str:
        return " ".join(self.parts)

    @property
    def paused(self) -> bool:
        return len(self.parts) > 1


@dataclass
class Result:
    eos_to_audio_ms: float | None = None
    endpoint_to_audio_ms: float | None = None
    transcript: str = ""
    cut_in: bool = False
    stages: dict[str, float] = field(default_factory=dict)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length) after lower-casing and dropping punctuation."""
    ref = re.sub(r"[^\w' ]", " ", reference.lower()).split()
    hyp = re.sub(r"[^\w' ]", " ", hypothesis.lower()).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def wer(pairs: list[tuple[str, str]]) -> float:
    errors = [word_errors(ref, hyp) for ref, hyp in pairs]
    return round(sum(e for e, _ in errors) / max(1, sum(n for _, n in errors)), 4)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    return {
        "p50": round(float(np.percentile(values, 50)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
    }


def make_questions(voice: Any, quick: bool) -> list[Question]:
    from app.audio import resample, to_float32

    def speech(text: str) -> np.ndarray:
        audio = resample(to_float32(voice.synthesize_all(text)), voice.sample_rate, RATE)
        loud = np.flatnonzero(np.abs(audio) > 2e-3)  # Piper pads with silence: trim it
        return audio[loud[0] : loud[-1] + 1]

    chosen = PLAIN[:2] + PAUSED[:2] if quick else PLAIN + PAUSED
    questions = []
    for parts in chosen:
        lead = np.zeros(RATE // 2, np.float32)
        pieces, first_end = [lead], 0
        for i, part in enumerate(parts):
            if i:
                pieces.append(np.zeros(RATE * PAUSE_MS // 1000, np.float32))
            pieces.append(speech(part))
            if i == 0:
                first_end = sum(len(p) for p in pieces)
        eos = sum(len(p) for p in pieces)
        pieces.append(np.zeros(int(RATE * 1.5), np.float32))
        questions.append(Question(parts, np.concatenate(pieces), eos, first_end))
    return questions


async def stream_question(assistant: Any, q: Question, conv_config: Any, wait_s: float) -> Result:
    """Push `q` in real time through a fresh Conversation; time the events as a client would see them."""
    from app.conversation import Conversation

    conv = Conversation(assistant, conv_config)
    result = Result()
    seen: dict[str, float] = {}
    finals: list[str] = []
    first_audio = asyncio.Event()
    eos_wall: list[float] = []
    started_after_eos: set[str] = set()
    started_before_eos: set[str] = set()
    last_stop: list[float] = []

    async def read() -> None:
        async for event in conv.events():
            now = time.perf_counter()
            if event.type == "speech_stopped":
                last_stop.append(now)
            elif event.type == "transcript_final":
                finals.append(event.text)
            elif event.type == "reply_started":
                if not eos_wall:
                    started_before_eos.add(event.reply_id)
                else:
                    started_after_eos.add(event.reply_id)
                    seen.setdefault("endpoint", last_stop[-1] if last_stop else now)
            elif event.type == "reply_audio":
                if not eos_wall or event.reply_id in started_before_eos:
                    result.cut_in = True  # it answered before the user had finished
                elif event.reply_id in started_after_eos and "audio" not in seen:
                    seen["audio"] = now
                    first_audio.set()
            elif event.type == "metrics" and event.reply_id in started_after_eos:
                result.stages = dict(event.timings_ms)

    reader = asyncio.create_task(read())
    chunk = RATE * CHUNK_MS // 1000
    t0 = time.perf_counter()
    n_chunks = -(-len(q.audio) // chunk)
    deadline = None
    for k in range(n_chunks + int(wait_s * 1000 / CHUNK_MS)):
        await asyncio.sleep(max(0.0, t0 + k * CHUNK_MS / 1000 - time.perf_counter()))
        start = k * chunk
        piece = q.audio[start : start + chunk] if start < len(q.audio) else np.zeros(chunk, np.float32)
        await conv.push_audio(piece, RATE)
        if not eos_wall and start + chunk >= q.eos_sample:
            eos_wall.append(time.perf_counter())
        if first_audio.is_set():
            deadline = deadline or time.perf_counter() + 0.2  # let the metrics event arrive
            if time.perf_counter() >= deadline:
                break
    await conv.cancel()
    await asyncio.sleep(0.05)
    await conv.close()
    await reader
    if "audio" in seen:
        result.eos_to_audio_ms = round(1000 * (seen["audio"] - eos_wall[0]), 1)
        result.endpoint_to_audio_ms = round(1000 * (seen["audio"] - seen["endpoint"]), 1)
    # A turn resumed after a false endpoint is re-finalised with the earlier words in front: keep the last.
    kept = [f for i, f in enumerate(finals) if not any(later.startswith(f) for later in finals[i + 1 :])]
    result.transcript = " ".join(kept)
    return result


def sequential_question(
    assistant: Any, q: Question, hangover_ms: int, max_tokens: int, out_rate: int
) -> Result:
    """Wait for a fixed hangover, then transcribe, generate and synthesise everything, one after another."""
    from asr.vad import FRAME, StreamingVAD
    from tts.stream import resample_int16

    probs = StreamingVAD().process(q.audio)
    threshold = assistant.config.conversation.vad_threshold
    speaking, start, last_voiced, endpoint = False, 0, 0, None
    for i, p in enumerate(probs):
        end = (i + 1) * FRAME
        if p >= threshold:
            if not speaking:
                speaking, start = True, i * FRAME
            last_voiced = end
        elif speaking and (end - last_voiced) * 1000 / RATE >= hangover_ms:
            endpoint = end
            break
    endpoint = endpoint or len(q.audio)
    result = Result(cut_in=endpoint < q.eos_sample)
    utterance = q.audio[max(0, start - RATE * 3 // 10) : endpoint]
    started = time.perf_counter()
    transcript = assistant.transcriber.transcribe(utterance).text
    asr_done = time.perf_counter()
    session = assistant.new_session()
    session.revise(transcript or "...")
    reply = "".join(delta.text for delta in session.generate(max_tokens=max_tokens))
    llm_done = time.perf_counter()
    audio = resample_int16(assistant.voice.synthesize_all(reply), assistant.voice.sample_rate, out_rate)
    done = time.perf_counter()
    compute_ms = 1000 * (done - started)
    wait_ms = max(0.0, (endpoint - q.eos_sample) * 1000 / RATE)
    result.eos_to_audio_ms = round(wait_ms + compute_ms, 1)
    result.endpoint_to_audio_ms = round(compute_ms, 1)
    result.transcript = transcript
    result.stages = {"eos_to_endpoint_ms": round(wait_ms, 1), "asr_ms": round(1000 * (asr_done - started), 1),
                     "llm_ms": round(1000 * (llm_done - asr_done), 1), "tts_ms": round(1000 * (done - llm_done), 1),
                     "reply_audio_ms": round(1000 * len(audio) / out_rate, 1)}  # fmt: skip
    return result


def summarize(results: list[Result], questions: list[Question], offline: list[str]) -> dict[str, Any]:
    eos = [r.eos_to_audio_ms for r in results if r.eos_to_audio_ms is not None]
    endpoint = [r.endpoint_to_audio_ms for r in results if r.endpoint_to_audio_ms is not None]
    paused = [r for r, q in zip(results, questions, strict=True) if q.paused]
    stage_names = sorted({k for r in results for k in r.stages})
    stages = {k: percentiles([r.stages[k] for r in results if k in r.stages])["p50"] for k in stage_names}
    return {
        "eos_to_audio_ms": percentiles(eos),
        "endpoint_to_audio_ms": percentiles(endpoint),
        "wer": wer([(q.text, r.transcript) for q, r in zip(questions, results, strict=True)]),
        "offline_wer": wer([(q.text, o) for q, o in zip(questions, offline, strict=True)]),
        "false_cutin_rate": round(sum(r.cut_in for r in paused) / len(paused), 3) if paused else None,
        "answered": len(eos),
        "questions": len(results),
        "stages_p50_ms": stages,
    }


async def run_bench(assistant: Any, quick: bool = False, max_tokens: int = 32, wait_s: float = 8.0,
                    log=print) -> dict[str, Any]:  # fmt: skip
    import dataclasses

    base = assistant.config.conversation
    # The bench input is clean (no loudspeaker echo), like a headset: full duplex, so a cut-in reply is
    # barged in on by the rest of the question, as a real user would do.
    conv_config = dataclasses.replace(base, echo_policy="full_duplex", max_reply_tokens=max_tokens)
    questions = make_questions(assistant.voice, quick)
    offline = [assistant.transcriber.transcribe(q.audio).text for q in questions]
    await stream_question(assistant, questions[0], conv_config, wait_s)  # warm-up (first calls), not measured
    ours: list[Result] = []
    for i, q in enumerate(questions):
        r = await stream_question(assistant, q, conv_config, wait_s)
        ours.append(r)
        log(f"  ours {i + 1:2d}/{len(questions)} eos->audio {r.eos_to_audio_ms} ms"
            f"{'  CUT-IN' if r.cut_in else ''}  {r.transcript!r}")  # fmt: skip
    sequential: list[Result] = []
    for i, q in enumerate(questions):
        r = sequential_question(assistant, q, base.hangover_ms, max_tokens, base.output_sample_rate)
        sequential.append(r)
        log(f"  sequential {i + 1:2d}/{len(questions)} eos->audio {r.eos_to_audio_ms} ms  {r.transcript!r}")
    report = {
        "ours": summarize(ours, questions, offline),
        "sequential": summarize(sequential, questions, offline),
    }
    a, b = report["ours"]["eos_to_audio_ms"]["p50"], report["sequential"]["eos_to_audio_ms"]["p50"]
    report["ratio_p50"] = round(b / a, 2) if a and b else None
    report["settings"] = {
        "questions": len(questions), "paused_questions": sum(q.paused for q in questions), "pause_ms": PAUSE_MS,
        "max_reply_tokens": max_tokens, "hangover_ms": base.hangover_ms,
        "complete_hangover_ms": base.complete_hangover_ms, "chunk_ms": CHUNK_MS, "paced": "wall clock",
    }  # fmt: skip
    report["per_question"] = [
        {"text": q.text, "offline": o, "ours": dataclasses.asdict(r), "sequential": dataclasses.asdict(s)}
        for q, o, r, s in zip(questions, offline, ours, sequential, strict=True)
    ]
    return report


def print_table(report: dict[str, Any]) -> None:
    rows = [
        ("eos -> first audio p50 (ms)", lambda r: r["eos_to_audio_ms"]["p50"]),
        ("eos -> first audio p95 (ms)", lambda r: r["eos_to_audio_ms"]["p95"]),
        ("endpoint -> first audio p50 (ms)", lambda r: r["endpoint_to_audio_ms"]["p50"]),
        ("endpoint -> first audio p95 (ms)", lambda r: r["endpoint_to_audio_ms"]["p95"]),
        ("WER (its transcripts)", lambda r: r["wer"]),
        ("offline WER (same audio)", lambda r: r["offline_wer"]),
        ("false cut-in rate", lambda r: r["false_cutin_rate"]),
        ("answered / questions", lambda r: f"{r['answered']}/{r['questions']}"),
    ]
    print(f"\n{'':34s}{'ours (streaming)':>18s}{'sequential':>14s}")
    for name, get in rows:
        print(f"{name:34s}{get(report['ours'])!s:>18s}{get(report['sequential'])!s:>14s}")
    print(f"{'ratio p50 (sequential / ours)':34s}{report['ratio_p50']!s:>18s}")
    print("\nwhere the time goes (p50, ms):")
    for label in ("ours", "sequential"):
        stages = ", ".join(f"{k}={v}" for k, v in report[label]["stages_p50_ms"].items())
        print(f"  {label}: {stages}")


def run(args: argparse.Namespace, config: Any) -> int:
    from app.assistant import Assistant

    assistant = Assistant.load(config)
    print(f"bench voice: {'quick, ' if args.quick else ''}real-time streaming, then the sequential baseline")
    report = asyncio.run(run_bench(assistant, args.quick, args.max_tokens, args.wait_s))
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0
