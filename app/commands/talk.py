"""`specvoice talk`: the desktop microphone and speakers (sounddevice / PortAudio) over one Conversation.

sounddevice is imported only here, lazily, so a machine without PortAudio can still serve and reply.
Echo: with the optional `livekit` package (`specvoice[aec]`) the speaker signal is cancelled out of the
microphone (app/echo.py) and the conversation listens all the time, so the user can interrupt by speaking;
without it, or with `--no-aec`, the conversation is half duplex (deaf while its voice plays); `--headset`
is full duplex with nothing to cancel. This module only moves audio and reports how much reply audio the
speakers really played.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from app.commands import add_skill_argument, apply_skills, install_skills

if TYPE_CHECKING:
    from app.echo import EchoCanceller

MIC_RATE = 16000
MIC_BLOCK = MIC_RATE // 50  # 20 ms


def open_sounddevice() -> Any:
    """Import sounddevice or explain, in one line, what is missing."""
    from app.cli import UsageError

    try:
        import sounddevice
    except OSError as exc:  # the module imports but cannot load libportaudio
        raise UsageError(
            f"PortAudio is not available ({exc}); install it (Debian: apt install libportaudio2)"
        ) from None
    except ImportError:
        raise UsageError("the sounddevice package is missing: pip install sounddevice") from None
    return sounddevice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    add_skill_argument(parser)
    parser.add_argument(
        "--input", metavar="DEVICE", help="microphone: index or part of the name (default: system)"
    )
    parser.add_argument(
        "--output", metavar="DEVICE", help="speakers: index or part of the name (default: system)"
    )
    parser.add_argument(
        "--headset",
        action="store_true",
        help="full duplex: keep listening while the assistant speaks (no echo to fear)",
    )
    aec = parser.add_mutually_exclusive_group()
    aec.add_argument(
        "--aec",
        action="store_true",
        help="require echo cancellation (the default whenever the livekit package is installed)",
    )
    aec.add_argument(
        "--no-aec",
        action="store_true",
        help="no echo cancellation: half duplex, the microphone is ignored while the assistant speaks",
    )


def find_device(sd: Any, spec: str | None, kind: str) -> int | None:
    """A device index from an index or a name fragment; None = the system default."""
    from app.cli import UsageError

    channels_key = "max_input_channels" if kind == "input" else "max_output_channels"
    try:
        devices = list(sd.query_devices())
    except Exception as exc:
        raise UsageError(f"cannot list audio devices: {exc}") from None
    usable = [i for i, d in enumerate(devices) if d[channels_key] > 0]
    if spec is None:
        if not usable:
            raise UsageError(f"no audio {kind} device found (is a sound server running? see --list-devices)")
        return None
    if spec.isdigit():
        index = int(spec)
        if index not in usable:
            raise UsageError(f"no {kind} device with index {index} (see --list-devices)")
        return index
    matches = [i for i in usable if spec.lower() in devices[i]["name"].lower()]
    if not matches:
        raise UsageError(f"no {kind} device matching {spec!r} (see --list-devices)")
    return matches[0]


def check_devices(sd: Any, input_device: int | None, output_device: int | None) -> None:
    from app.cli import UsageError

    for kind, device, check in (
        ("microphone", input_device, sd.check_input_settings),
        ("speaker", output_device, sd.check_output_settings),
    ):
        try:
            check(device=device, channels=1, dtype="int16")
        except Exception as exc:
            raise UsageError(f"cannot use the {kind}: {exc}") from None


def list_devices(sd: Any) -> None:
    devices = sd.query_devices()
    if not len(devices):
        print("no audio devices found")
    for index, d in enumerate(devices):
        kinds = [k for k, n in (("in", d["max_input_channels"]), ("out", d["max_output_channels"])) if n > 0]
        print(f"{index:3d}  {d['name']}  ({'/'.join(kinds)}, {d['default_samplerate']:.0f} Hz)")


class PlaybackBuffer:
    """Reply audio waiting for the speakers, filled by the event loop and drained by PortAudio's thread.
    It counts what was really played per reply, which is what barge-in and history truncation need."""

    def __init__(self, on_render: Callable[[np.ndarray], None] | None = None) -> None:
        self.on_render = on_render  # sees every block the speakers play, silence included (echo cancelling)
        self._lock = threading.Lock()
        self._chunks: collections.deque[tuple[str, np.ndarray]] = collections.deque()
        self.played_samples: dict[str, int] = {}
        self.idle = threading.Event()  # set whenever nothing is left to play
        self.idle.set()
        self.sounding = threading.Event()  # set while reply audio is coming out of the speakers

    def add(self, reply_id: str, pcm: np.ndarray) -> None:
        with self._lock:
            self._chunks.append((reply_id, pcm.astype(np.int16, copy=False)))
            self.idle.clear()

    def clear(self, reply_id: str | None = None) -> None:
        with self._lock:
            self._chunks = collections.deque(
                c for c in self._chunks if reply_id is not None and c[0] != reply_id
            )
            if not self._chunks:
                self.idle.set()
                self.sounding.clear()

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._chunks)

    def callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        out = outdata[:, 0] if outdata.ndim == 2 else outdata
        filled = 0
        with self._lock:
            while filled < frames and self._chunks:
                reply_id, pcm = self._chunks[0]
                n = min(frames - filled, len(pcm))
                out[filled : filled + n] = pcm[:n]
                filled += n
                self.played_samples[reply_id] = self.played_samples.get(reply_id, 0) + n
                if n == len(pcm):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = (reply_id, pcm[n:])
            if filled:
                self.sounding.set()
            if not self._chunks:
                self.idle.set()
                self.sounding.clear()
        out[filled:] = 0
        if self.on_render is not None:
            self.on_render(out)
        if outdata.ndim == 2 and outdata.shape[1] > 1:
            outdata[:, 1:] = outdata[:, :1]


def _open_stream(factory: Callable[..., Any], rates: list[int], **kwargs: Any) -> tuple[Any, int]:
    """Open at the first sample rate the device accepts (the Conversation resamples anything)."""
    from app.cli import UsageError

    last: Exception | None = None
    for rate in dict.fromkeys(r for r in rates if r):
        try:
            return factory(samplerate=rate, **kwargs), rate
        except Exception as exc:  # sounddevice.PortAudioError, ValueError for bad settings
            last = exc
    raise UsageError(f"cannot open the audio device: {last}") from None


class Printer:
    """Live transcript in a terminal (a line rewritten in place), plain lines when piped."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout  # looked up now: sys.stdout may have been replaced since import
        try:
            self.live = bool(self.stream.isatty())
        except (AttributeError, ValueError):  # no stdout, or a closed one
            self.live = False

    def partial(self, text: str) -> None:
        if self.live:
            self.stream.write(f"\r\033[Kyou: {text}")
            self.stream.flush()

    def line(self, text: str) -> None:
        self.stream.write(("\r\033[K" if self.live else "") + text + "\n")
        self.stream.flush()


async def talk_loop(
    assistant: Any,
    conv_config: Any,
    sd: Any,
    input_device: int | None = None,
    output_device: int | None = None,
    stop: asyncio.Event | None = None,
    printer: Printer | None = None,
    playback: PlaybackBuffer | None = None,
    aec: bool = False,
) -> None:
    """Run one conversation between the microphone and the speakers until `stop` is set or cancelled.
    With `aec`, what the speakers play is cancelled out of the microphone before the conversation hears it
    (pair it with `echo_policy="full_duplex"`)."""
    from app import events as ev

    printer = printer or Printer()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    mic: asyncio.Queue[np.ndarray] = asyncio.Queue(
        maxsize=500
    )  # 10 s; beyond that drop, never block PortAudio
    playback = playback or PlaybackBuffer()

    canceller: EchoCanceller | None = None  # set once the streams' latencies are known, before they start

    def on_mic(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # The canceller runs here, on PortAudio's capture thread, so it sees speaker and microphone blocks
        # in the order they happened, whatever the event loop is busy with.
        chunk = indata[:, 0].copy() if canceller is None else canceller.capture(indata[:, 0], mic_rate)
        if chunk.size:
            loop.call_soon_threadsafe(lambda: mic.full() or mic.put_nowait(chunk))

    def on_render(block: np.ndarray) -> None:
        if canceller is not None:
            canceller.render(block, out_rate)

    default_in = sd.query_devices(input_device, "input")["default_samplerate"]
    default_out = sd.query_devices(output_device, "output")["default_samplerate"]
    mic_stream, mic_rate = _open_stream(
        sd.InputStream,
        [MIC_RATE, int(default_in)],
        device=input_device,
        channels=1,
        dtype="int16",
        callback=on_mic,
    )
    speaker, out_rate = _open_stream(
        sd.OutputStream,
        [conv_config.output_sample_rate, int(default_out)],
        device=output_device,
        channels=1,
        dtype="int16",
        callback=playback.callback,
    )
    if aec:
        from app.echo import APM_RATE, EchoCanceller

        # The device buffers are the least delay the echo can have; the canceller finds the rest itself.
        canceller = EchoCanceller(delay_ms=int(1000 * (mic_stream.latency + speaker.latency)))
        playback.on_render = on_render
        pushed_rate = APM_RATE
    else:
        pushed_rate = mic_rate
    conv = assistant.conversation(dataclasses.replace(conv_config, output_sample_rate=out_rate))
    reply_text: dict[str, str] = {}

    async def show_events() -> None:
        async for event in conv.events():
            if isinstance(event, ev.TranscriptPartial):
                printer.partial((event.committed + " " + event.tentative).strip())
            elif isinstance(event, ev.TranscriptFinal):
                printer.line(f"you: {event.text}")
            elif isinstance(event, ev.ReplyTextDelta):
                reply_text[event.reply_id] = reply_text.get(event.reply_id, "") + event.text
            elif isinstance(event, ev.ReplyAudio):
                playback.add(event.reply_id, np.frombuffer(event.pcm, dtype="<i2"))
            elif isinstance(event, ev.ReplyDone):
                printer.line(f"assistant: {event.text or reply_text.pop(event.reply_id, '')}")
            elif isinstance(event, ev.Interrupted):
                playback.clear(event.reply_id)
                printer.line(f"assistant (interrupted): {event.spoken_text}")
            elif isinstance(event, ev.ErrorEvent):
                printer.line(f"error: {event.message}")

    async def feed_mic() -> None:
        reported: dict[str, int] = {}
        while True:
            chunk = await mic.get()
            await conv.push_audio(chunk, pushed_rate)
            for reply_id, samples in list(playback.played_samples.items())[-4:]:  # only recent replies move
                if reported.get(reply_id) != samples:
                    reported[reply_id] = samples
                    conv.played(reply_id, 1000.0 * samples / out_rate)

    tasks = [asyncio.create_task(show_events()), asyncio.create_task(feed_mic())]
    try:
        with mic_stream, speaker:
            printer.line("listening: speak, then pause (Ctrl-C to quit)")
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await conv.close()


def choose_aec(args: argparse.Namespace) -> bool:
    """Echo cancellation whenever it can run, unless a headset makes it pointless or the user said no."""
    from app.cli import UsageError
    from app.echo import unavailable

    if args.headset or args.no_aec:
        return False
    why_not = unavailable()
    if why_not is None:
        print("echo cancellation on: speak any time to interrupt", flush=True)
        return True
    if args.aec:
        raise UsageError(why_not)
    print(f"half duplex (the microphone rests while the assistant speaks): {why_not}", flush=True)
    return False


def run(args: argparse.Namespace, config) -> int:
    sd = open_sounddevice()
    if args.list_devices:
        list_devices(sd)
        return 0
    input_device = find_device(sd, args.input, "input")
    output_device = find_device(sd, args.output, "output")
    check_devices(sd, input_device, output_device)  # before the slow model load
    aec = choose_aec(args)

    from app.assistant import Assistant

    print("loading models...", flush=True)
    apply_skills(args, config)
    assistant = Assistant.load(config)
    install_skills(assistant)
    conv_config = dataclasses.replace(
        config.conversation, echo_policy="full_duplex" if args.headset or aec else "half_duplex"
    )
    try:
        asyncio.run(talk_loop(assistant, conv_config, sd, input_device, output_device, aec=aec))
    except KeyboardInterrupt:
        print("\nbye", flush=True)
    return 0
