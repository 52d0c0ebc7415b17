"""Time the preemptive reply stage by stage on a few spoken questions, streamed at real-time pace.

    .venv/bin/python scripts/measure_preemptive.py [--json out.json] [--endpointing semantic|fixed]

Per turn, from the reply's `metrics` (all in ms): the silence the endpoint waited (audio time), the final
decode (0 when the last partial decode already heard everything), end of speech -> endpoint, -> first LLM
token, -> first reply audio, and the first piece's synthesis. Questions are spoken by flite's "awb" voice
(not the assistant's); a measurement, not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "How many legs does a spider have?",
    "Tell me something nice about Mondays.",
    "What is the boiling point of water?",
    "Which ocean is the largest?",
    "Name a good dog breed for a small flat.",
]
FIELDS = ("endpoint_silence_ms", "asr_final_ms", "eos_to_endpoint_ms", "eos_to_first_token_ms",
          "eos_to_first_audio_ms", "endpoint_to_first_audio_ms", "first_piece_synthesis_ms", "preemptive")


def flite(text: str) -> np.ndarray:
    import soundfile as sf

    from app.audio import resample

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "q.wav"
        subprocess.run(["flite", "-voice", "awb", "-t", text, "-o", str(wav)], check=True, capture_output=True)
        audio, rate = sf.read(wav, dtype="float32")
    return resample(audio, rate, 16000)


async def one_turn(assistant, config, audio: np.ndarray) -> dict[str, float]:
    conv = assistant.conversation(config)
    metrics: asyncio.Future = asyncio.get_running_loop().create_future()

    async def read() -> None:
        async for event in conv.events():
            if event.type == "metrics" and not metrics.done():
                metrics.set_result(event.timings_ms)

    reader = asyncio.create_task(read())
    audio = np.concatenate([np.zeros(6400, np.float32), audio, np.zeros(16000 * 3, np.float32)])
    chunk, t0 = 320, time.perf_counter()
    for k in range(0, audio.size, chunk):
        await asyncio.sleep(max(0.0, t0 + k / 16000 - time.perf_counter()))  # real-time pace
        await conv.push_audio(audio[k : k + chunk], 16000)
        if metrics.done():
            break
    timings = await asyncio.wait_for(metrics, 30)
    await conv.close()
    await reader
    return {k: timings.get(k, float("nan")) for k in FIELDS}


async def main_async(args: argparse.Namespace) -> dict:
    from app.assistant import Assistant
    from app.config import ConversationConfig, load_config

    assistant = Assistant.load(load_config(environ={}))
    config = ConversationConfig(endpointing=args.endpointing, max_reply_tokens=24, output_sample_rate=16000)
    await one_turn(assistant, config, flite("Hello there."))  # warm-up (first calls load kernels)
    rows = []
    for q in QUESTIONS:
        row = await one_turn(assistant, config, flite(q))
        rows.append({"question": q, **row})
        print(" ".join(f"{k}={row[k]:.0f}" for k in FIELDS), q, flush=True)
    summary = {k: {"p50": statistics.median(r[k] for r in rows), "min": min(r[k] for r in rows),
                   "max": max(r[k] for r in rows)} for k in FIELDS}  # fmt: skip
    return {"endpointing": args.endpointing, "turns": rows, "summary": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--endpointing", default="semantic", choices=("semantic", "fixed"))
    args = ap.parse_args()
    report = asyncio.run(main_async(args))
    print("\n| stage | p50 | min | max |\n|---|---|---|---|")
    for k, v in report["summary"].items():
        print(f"| {k} | {v['p50']:.0f} | {v['min']:.0f} | {v['max']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
