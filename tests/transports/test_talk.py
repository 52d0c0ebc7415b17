"""`specvoice talk` against a real PulseAudio server: a virtual microphone speaks the question, a null sink
records what the assistant says. No mocked sounddevice."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys

import numpy as np
import pulse_harness as pulse
import pytest
from transport_support import QUESTION_WAV, make_config, mentions_mountain

pytestmark = pytest.mark.skipif(pulse.available() is not None, reason=str(pulse.available()))


def specvoice(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_list_devices_and_bad_device_choice(pulse_server):
    listed = specvoice("talk", "--list-devices", env=pulse_server.env)
    assert listed.returncode == 0 and "pulse" in listed.stdout, listed
    bad = specvoice("talk", "--input", "no-such-microphone", env=pulse_server.env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "specvoice: error: no input device matching 'no-such-microphone' (see --list-devices)"
    ]


def test_no_audio_device_gives_one_clear_line(tmp_path):
    # No sound server to reach and no sound card in the machine: PortAudio finds no device at all.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PULSE_SERVER": f"unix:{tmp_path}/no-such-socket"}
    done = specvoice("talk", env=env)
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [
        "specvoice: error: no audio input device found (is a sound server running? see --list-devices)"
    ]
    assert "loading models" not in done.stdout  # refused before the slow part


async def test_talk_hears_the_question_and_speaks_the_reply(pulse_server, assistant, tmp_path):
    import sounddevice

    from app.commands.talk import PlaybackBuffer, Printer, talk_loop

    lines: list[str] = []
    replied = asyncio.Event()
    listening = asyncio.Event()

    class Recorder(Printer):
        def partial(self, text: str) -> None:
            pass

        def line(self, text: str) -> None:
            lines.append(text)
            if text.startswith("listening"):  # the microphone stream is open: speak now
                listening.set()
            if text.startswith("assistant"):
                replied.set()

    sounddevice._terminate()  # PortAudio caches devices: re-scan to see this test's sound server
    sounddevice._initialize()
    config = make_config()
    conv_config = dataclasses.replace(config.conversation, echo_policy="half_duplex")
    recording = tmp_path / "reply.wav"
    recorder = pulse_server.record(recording)
    playback = PlaybackBuffer()
    talk = asyncio.create_task(
        talk_loop(assistant, conv_config, sounddevice, printer=Recorder(), playback=playback)
    )
    speaker = None
    try:
        await asyncio.wait_for(asyncio.shield(listening.wait()), 60)
        speaker = pulse_server.speak(QUESTION_WAV)
        await asyncio.wait_for(asyncio.shield(replied.wait()), 180)
        assert await asyncio.to_thread(playback.idle.wait, 120), "the reply never finished playing"
        # Ctrl-C under asyncio.run cancels the main task: that must close the streams and the conversation.
        talk.cancel()
        with pytest.raises(asyncio.CancelledError):
            await talk
    finally:
        talk.cancel()
        if speaker is not None:
            speaker.wait(30)
        recorder.terminate()
        recorder.wait(30)
    streams_left = pulse_server.streams()
    sounddevice._terminate()  # let go of this test's sound server before it stops
    sounddevice._initialize()
    assert streams_left == {"sink-inputs": [], "source-outputs": []}, "PortAudio streams left open"
    heard = [line for line in lines if line.startswith("you:")]
    said = [line for line in lines if line.startswith("assistant")]
    assert heard and mentions_mountain(heard[0]), lines
    assert said and said[0].split(":", 1)[1].strip(), lines
    import soundfile

    audio, _ = soundfile.read(recording, dtype="float32")
    assert audio.size and np.abs(audio).max() > 0.02, "the reply should have reached the speakers"
