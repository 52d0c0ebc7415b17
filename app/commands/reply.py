"""`specvoice reply IN [-o OUT.wav] [--json]`: answer one spoken question from an audio file."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from app.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="spoken question: wav, flac, ogg or mp3; any rate or channels")
    parser.add_argument("-o", "--output", metavar="OUT.wav", default="reply.wav",
                        help="where to write the spoken reply (default: reply.wav)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (transcript, reply_text, reply_audio_seconds, timings_ms)")
    parser.epilog = (
        "timings_ms: asr = transcription; llm_first_token = end of ASR to first reply token; llm_total = LLM "
        "time; tts = synthesis time; tts_first_audio = input ready to first reply audio; total = whole turn."
    )


def run(args: argparse.Namespace, config: Config) -> int:
    from app.assistant import Assistant
    from app.audio import AudioError, read_audio, write_wav
    from app.commands import UsageError
    from app.store import ModelUnavailable
    from app.turn import NoSpeech, check_speech, reply_to_audio

    try:
        audio = read_audio(args.input)
        check_speech(audio)  # before loading models: bad input fails fast
        load_started = time.perf_counter()
        assistant = Assistant.load(config)
        load_ms = round(1000 * (time.perf_counter() - load_started), 1)
        result = reply_to_audio(assistant, audio)
    except (AudioError, ModelUnavailable) as exc:
        raise UsageError(str(exc)) from None
    except NoSpeech:
        if args.json:
            print(json.dumps({"transcript": "", "reply_text": "", "reply_audio_seconds": 0.0, "no_speech": True}))
        else:
            print("no speech found in the input: nothing to answer")
        return 0
    output = Path(args.output)
    write_wav(output, result.reply_audio, result.sample_rate)
    if args.json:
        print(json.dumps({
            "transcript": result.transcript,
            "reply_text": result.reply_text,
            "reply_audio_seconds": round(result.reply_audio_seconds, 3),
            "reply_wav": str(output),
            "timings_ms": result.timings_ms,
            "load_ms": load_ms,
        }))
        return 0
    print(f"you said:   {result.transcript}")
    print(f"assistant:  {result.reply_text}")
    print(f"reply WAV:  {output} ({result.reply_audio_seconds:.1f} s)")
    print(f"loaded models in {load_ms:.0f} ms; timings (ms):")
    for name, value in result.timings_ms.items():
        print(f"  {name:<16}{value:>8.0f}")
    return 0
