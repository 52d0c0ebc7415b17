"""`specvoice client`: stream a file (or the microphone) to a specvoice server over the Realtime protocol,
print the transcript and the reply, and save or play the reply audio. `converse()` is also the simulated
client of `specvoice bench serve`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RATE = 24000
CHUNK_MS = 20
DEFAULT_URL = "ws://127.0.0.1:8765/v1/realtime"


@dataclass
class ClientResult:
    transcript: str = ""
    reply_text: str = ""
    reply_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    status: str = ""
    first_audio_ms: float | None = None  # end of the question's audio -> first reply audio received
    errors: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", nargs="?", default=DEFAULT_URL, help=f"server endpoint (default {DEFAULT_URL})"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--file", metavar="AUDIO", help="spoken question to stream (wav/flac/ogg/mp3)")
    source.add_argument("--text", help="send a text question instead of audio")
    source.add_argument("--mic", action="store_true", help="stream the microphone until Ctrl-C")
    parser.add_argument("--save", metavar="WAV", help="write the reply audio here")
    parser.add_argument("--play", action="store_true", help="play the reply through the speakers")
    parser.add_argument(
        "--token", help="server token (visible in `ps`: prefer --token-file or SPECVOICE_SERVER_TOKEN)"
    )
    parser.add_argument("--token-file", metavar="FILE", help="read the server token from FILE")
    parser.add_argument(
        "--fast", action="store_true", help="send the file as fast as possible, not in real time"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")


def user_text_event(text: str) -> dict:
    """A Realtime `conversation.item.create` carrying one user text message."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return {"type": "conversation.item.create", "item": item}


def _connect(url: str, token: str | None):
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(url, additional_headers=headers, max_size=None, open_timeout=10)


def _append(chunk: np.ndarray) -> str:
    return json.dumps(
        {
            "type": "input_audio_buffer.append",
            "audio": base64.b64encode(chunk.astype("<i2").tobytes()).decode(),
        }
    )


async def converse(
    url: str,
    *,
    audio: np.ndarray | None = None,
    text: str | None = None,
    token: str | None = None,
    realtime: bool = True,
    timeout: float = 120.0,
    trailing_silence_s: float = 4.0,
    on_event=None,
) -> ClientResult:
    """One question (24 kHz int16 audio, or text) and its reply. Audio is paced like a live microphone,
    followed by silence until the server's VAD ends the turn (or a manual commit if it never does)."""
    result = ClientResult()
    eos: list[float] = []
    turn_ended = asyncio.Event()  # the server's VAD closed the user turn
    async with _connect(url, token) as ws:

        async def receive() -> None:
            async for raw in ws:
                event = json.loads(raw)
                kind = event.get("type")
                if on_event is not None:
                    on_event(event)
                if kind in ("input_audio_buffer.speech_stopped", "input_audio_buffer.committed"):
                    turn_ended.set()
                elif kind == "conversation.item.input_audio_transcription.completed":
                    result.transcript = event["transcript"]
                elif kind == "response.output_audio.delta":
                    if result.first_audio_ms is None and eos:
                        result.first_audio_ms = 1000.0 * (time.perf_counter() - eos[0])
                    pcm = np.frombuffer(base64.b64decode(event["delta"]), dtype="<i2")
                    result.reply_audio = np.concatenate([result.reply_audio, pcm])
                elif kind == "response.output_audio_transcript.delta":
                    result.reply_text += event["delta"]
                elif kind == "error":
                    result.errors.append(event["error"]["message"])
                elif kind == "response.done":
                    result.status = event["response"]["status"]
                    return

        receiver = asyncio.create_task(receive())
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "audio": {
                            "input": {"format": {"type": "audio/pcm", "rate": RATE}},
                            "output": {"format": {"type": "audio/pcm", "rate": RATE}},
                        },
                    },
                }
            )
        )
        try:
            if text is not None:
                await ws.send(json.dumps(user_text_event(text)))
                eos.append(time.perf_counter())
                await ws.send(json.dumps({"type": "response.create"}))
            elif audio is not None:
                await _stream(ws, audio, realtime, eos, receiver, turn_ended, trailing_silence_s, timeout)
            await asyncio.wait_for(asyncio.shield(receiver), timeout)
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)  # wait_for above already raised its error
    return result


async def _stream(
    ws,
    audio: np.ndarray,
    realtime: bool,
    eos: list[float],
    receiver: asyncio.Task,
    turn_ended: asyncio.Event,
    trailing_silence_s: float,
    timeout: float,
) -> None:
    """Send the question, then silence. Live (`realtime`), silence keeps flowing until the reply is done, as
    from an open microphone; otherwise only `trailing_silence_s` of it. If the server's VAD has not ended the
    turn by then (manual turn detection), commit and ask for a response ourselves."""
    step = RATE * CHUNK_MS // 1000
    started = time.perf_counter()
    sent_s = 0.0
    for start in range(0, len(audio), step):
        await ws.send(_append(audio[start : start + step]))
        sent_s += len(audio[start : start + step]) / RATE
        if realtime:
            await asyncio.sleep(max(0.0, started + sent_s - time.perf_counter()))
    eos.append(time.perf_counter())
    silence = np.zeros(step, np.int16)
    silence_s, committed = 0.0, False
    while not receiver.done() and time.perf_counter() - started < timeout:
        if not realtime and silence_s >= trailing_silence_s:
            break
        await ws.send(_append(silence))
        sent_s += CHUNK_MS / 1000
        silence_s += CHUNK_MS / 1000
        await asyncio.sleep(max(0.0, started + sent_s - time.perf_counter()) if realtime else 0)
        if silence_s >= trailing_silence_s and not turn_ended.is_set() and not committed:
            committed = True
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            await ws.send(json.dumps({"type": "response.create"}))
    if not committed and not turn_ended.is_set() and not receiver.done():
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await ws.send(json.dumps({"type": "response.create"}))


def run(args: argparse.Namespace, config) -> int:
    from app.cli import UsageError

    if args.token_file:
        from app.commands.serve import read_token_file

        args.token = read_token_file(args.token_file)
    token = args.token or os.environ.get("SPECVOICE_SERVER_TOKEN") or config.server.token
    if args.mic:
        try:
            return asyncio.run(_mic_session(args.url, token))
        except KeyboardInterrupt:
            print("\nbye", flush=True)
            return 0
    audio = None
    if args.file:
        from app.audio import AudioError, read_audio, to_int16

        try:
            audio = to_int16(read_audio(args.file, rate=RATE))
        except AudioError as exc:
            raise UsageError(str(exc)) from None
    elif not args.text:
        raise UsageError("give --file AUDIO, --text TEXT or --mic")
    try:
        result = asyncio.run(
            converse(
                args.url,
                audio=audio,
                text=args.text,
                token=token,
                realtime=not args.fast,
                timeout=args.timeout,
            )
        )
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"cannot talk to {args.url}: {exc}") from None
    except Exception as exc:  # websockets' handshake/close errors carry the server's reason
        if type(exc).__module__.startswith("websockets"):
            raise UsageError(f"{args.url}: {exc}") from None
        raise
    if result.transcript:
        print(f"you:       {result.transcript}")
    print(f"assistant: {result.reply_text}")
    if result.first_audio_ms is not None:
        print(f"first reply audio {result.first_audio_ms:.0f} ms after the end of the question")
    for message in result.errors:
        print(f"server error: {message}", file=sys.stderr)
    if args.save:
        from app.audio import write_wav

        write_wav(Path(args.save), result.reply_audio, RATE)
        print(f"reply audio saved to {args.save} ({len(result.reply_audio) / RATE:.1f} s)")
    if args.play and result.reply_audio.size:
        from app.commands.talk import open_sounddevice

        sd = open_sounddevice()
        sd.play(result.reply_audio, RATE)
        sd.wait()
    return 0 if result.status == "completed" else 1


async def _mic_session(url: str, token: str | None) -> int:
    """Live microphone to the server, replies to the speakers; the server does turn taking and barge-in."""
    from app.commands.talk import PlaybackBuffer, open_sounddevice

    sd = open_sounddevice()
    loop = asyncio.get_running_loop()
    mic: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=200)
    playback = PlaybackBuffer()
    last_item: list[str] = []  # the assistant item being played

    def on_mic(indata, frames, time_info, status) -> None:
        chunk = indata[:, 0].copy()
        loop.call_soon_threadsafe(lambda: mic.full() or mic.put_nowait(chunk))

    async with _connect(url, token) as ws:

        async def receive() -> None:
            async for raw in ws:
                event = json.loads(raw)
                kind = event.get("type")
                if kind == "input_audio_buffer.speech_started":  # barge-in: stop, say how much was heard
                    if not playback.idle.is_set() and last_item:
                        heard_ms = 1000.0 * playback.played_samples.get(last_item[0], 0) / RATE
                        truncate = {
                            "type": "conversation.item.truncate",
                            "item_id": last_item[0],
                            "content_index": 0,
                            "audio_end_ms": int(heard_ms),
                        }
                        await ws.send(json.dumps(truncate))
                    playback.clear()
                elif kind == "conversation.item.input_audio_transcription.completed":
                    print(f"you:       {event['transcript']}", flush=True)
                elif kind == "response.output_audio.delta":
                    last_item[:] = [event["item_id"]]
                    playback.add(
                        event["item_id"], np.frombuffer(base64.b64decode(event["delta"]), dtype="<i2")
                    )
                elif kind == "response.output_audio_transcript.done":
                    print(f"assistant: {event['transcript']}", flush=True)
                elif kind == "error":
                    print(f"server error: {event['error']['message']}", file=sys.stderr, flush=True)

        receiver = asyncio.create_task(receive())
        streams = [
            sd.InputStream(samplerate=RATE, channels=1, dtype="int16", blocksize=RATE * CHUNK_MS // 1000,
                           callback=on_mic),
            sd.OutputStream(samplerate=RATE, channels=1, dtype="int16", callback=playback.callback),
        ]  # fmt: skip
        try:
            for stream in streams:
                stream.start()
            print("listening (Ctrl-C to stop)", flush=True)
            while not receiver.done():
                await ws.send(_append(await mic.get()))
        finally:  # Ctrl-C cancels us here: streams and socket close on the way out
            receiver.cancel()
            _close_streams(streams)
    return 0


def _close_streams(streams: list[Any], timeout_s: float = 2.0) -> None:
    """Close the sound streams without draining them (close() discards what is queued, as abort() does; a
    `with` block's stop() would first wait for the output to play out). A stalled sound server can still
    hold PortAudio's close, so it runs on a daemon thread: Ctrl-C must end the client promptly."""
    closer = threading.Thread(
        target=lambda: [stream.close(ignore_errors=True) for stream in streams], name="close-audio", daemon=True
    )
    closer.start()
    closer.join(timeout_s)
    if closer.is_alive():
        print("the sound server did not close the audio streams in time; leaving them", file=sys.stderr)
