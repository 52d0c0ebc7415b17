"""`python -m bench.lanes`: the shared ASR and TTS lanes under a burst of sessions, side by side.

The moment `bench serve` finds slow at N = 4: several users end their turns at once while other sessions
are mid-utterance (partial decodes queued) or mid-reply (later pieces queued). Per trial, on one lane:
- ASR: `n` sessions' partial decodes of a long utterance are queued, then `n` other sessions' final
  decodes of short questions arrive; measured: each final's wait + decode (what a reply waits on).
- TTS: `n` replies' later pieces (whole sentences) are queued, then `n` other replies' first pieces
  (a few words) arrive; measured: each first piece's wait + synthesis (the first audio a user hears).
Settings compared in the same process, trials interleaved (ABAB...) so machine load drifts evenly:
`arrival` (one worker, arrival order: before this change), `priority` (finals / first pieces first) and,
for ASR, `priority+batch` (concurrent decodes as one batched Whisper call). Real Whisper tiny.en and Piper
joe; the test speech is Piper joe too (not the assistant's voice in a listening test sense: here only the
compute matters). Writes JSON and prints a table of p50 / p95 / max per setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

LONG = ("I would like to hear about the history of the old railway line that ran along the coast from the "
        "harbour to the mountains, and why it was closed after the war.")
QUESTIONS = ["What time is it?", "Turn on the lights.", "How is the weather today?", "Set a timer for ten minutes.",
             "Who wrote Hamlet?", "Play some music.", "What is two plus two?", "Call my brother."]
LATER = ["It ran along the coast for forty miles, past the fishing villages and the old salt works.",
         "The line closed in nineteen sixty, when the new road over the hills was finished.",
         "Trains carried fish, timber and holiday makers, and the station clock still keeps time."]
FIRST = ["Sure, here", "Okay, so", "Well, the", "Right, it", "Yes, the", "Good question.", "Hello there,", "Of course."]


async def _asr_trial(setting: str, n: int, decoder, long_audio, questions) -> list[float]:
    from app.media_lanes import AsrLane
    from app.reply_stream import Lane
    from asr.streaming import StreamingTranscriber

    lane = AsrLane("asr", priorities=setting != "arrival", batch=setting == "priority+batch")

    def session(audio):
        stream = StreamingTranscriber(decoder)
        stream.append(audio)
        return stream

    talkers = [session(long_audio[: int(len(long_audio) * (0.5 + 0.5 * i / max(1, n)))]) for i in range(n)]
    askers = [session(questions[i % len(questions)]) for i in range(n)]
    partials = [asyncio.ensure_future(lane.run(t.decode, t.snapshot(), priority=Lane.BACKGROUND)) for t in talkers]
    for _ in range(3):
        await asyncio.sleep(0)  # let them queue first

    async def final(stream) -> float:
        started = time.perf_counter()
        await lane.run(stream.decode, stream.snapshot())
        return 1000.0 * (time.perf_counter() - started)

    waits = await asyncio.gather(*(final(a) for a in askers))
    await asyncio.gather(*partials)
    return list(waits)


async def _tts_trial(setting: str, n: int, synthesizer) -> list[float]:
    from app.media_lanes import PriorityLane
    from app.reply_stream import Lane

    lane = PriorityLane("tts", priorities=setting != "arrival")
    later = [asyncio.ensure_future(lane.run(synthesizer.synthesize, LATER[i % len(LATER)], priority=Lane.BACKGROUND))
             for i in range(n)]  # fmt: skip
    for _ in range(3):
        await asyncio.sleep(0)  # let them queue first

    async def first(text: str) -> float:
        started = time.perf_counter()
        await lane.run(synthesizer.synthesize, text)
        return 1000.0 * (time.perf_counter() - started)

    waits = await asyncio.gather(*(first(FIRST[i % len(FIRST)]) for i in range(n)))
    await asyncio.gather(*later)
    return list(waits)


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"n": len(values), "p50_ms": round(float(np.percentile(arr, 50)), 1),
            "p95_ms": round(float(np.percentile(arr, 95)), 1), "max_ms": round(float(arr.max()), 1),
            "mean_ms": round(statistics.fmean(values), 1)}  # fmt: skip


async def run_bench(sessions: int, trials: int) -> dict[str, Any]:
    from app.audio import resample, to_float32
    from app.profiles import ASR_TINY_EN, TTS_JOE
    from app.store import fetch
    from asr.streaming import ShortWindowDecoder
    from asr.whisper import Transcriber
    from tts.piper_voice import Voice
    from tts.stream import PieceSynthesizer

    transcriber = Transcriber(fetch(ASR_TINY_EN, progress=False))
    voice = Voice(fetch(TTS_JOE, progress=False))
    decoder = ShortWindowDecoder(transcriber.model)
    synthesizer = PieceSynthesizer(voice, 24000)

    def speak(text: str) -> np.ndarray:
        return resample(to_float32(voice.synthesize_all(text)), voice.sample_rate, 16000)

    long_audio, questions = speak(LONG), [speak(q) for q in QUESTIONS]
    decoder.decode(questions[0])  # warm-up
    synthesizer.synthesize("Warm up.")
    asr: dict[str, list[float]] = {"arrival": [], "priority": [], "priority+batch": []}
    tts: dict[str, list[float]] = {"arrival": [], "priority": []}
    for trial in range(trials):
        order = list(asr) if trial % 2 == 0 else list(reversed(asr))
        for setting in order:
            asr[setting] += await _asr_trial(setting, sessions, decoder, long_audio, questions)
        for setting in (list(tts) if trial % 2 == 0 else list(reversed(tts))):
            tts[setting] += await _tts_trial(setting, sessions, synthesizer)
        print(f"  trial {trial + 1}/{trials} done", flush=True)
    return {
        "sessions": sessions,
        "trials": trials,
        "load_average": os.getloadavg(),
        "asr_final_ms": {k: _summary(v) for k, v in asr.items()},
        "tts_first_piece_ms": {k: _summary(v) for k, v in tts.items()},
        "definition": "per session: from asking the lane to the result (queue wait + work); ASR: a short "
                      "question's final decode with other sessions' partial decodes of a long utterance "
                      "queued before it; TTS: a reply's first piece with other replies' sentence pieces "
                      "queued before it",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4, help="sessions ending their turns at once (default 4)")
    parser.add_argument("--trials", type=int, default=6, help="interleaved trials per setting (default 6)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    report = asyncio.run(run_bench(args.sessions, args.trials))
    report["load_before"] = load_before
    print(f"\n{args.sessions} sessions at once, {args.trials} trials; load average {load_before:.1f} -> "
          f"{report['load_average'][0]:.1f}")
    print(f"{'stage':<22} {'setting':<16} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for stage in ("asr_final_ms", "tts_first_piece_ms"):
        for setting, s in report[stage].items():
            print(f"{stage:<22} {setting:<16} {s['p50_ms']:>8.0f} {s['p95_ms']:>8.0f} {s['max_ms']:>8.0f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
