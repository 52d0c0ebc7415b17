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


async def test_echo_cancelling_talk_never_answers_itself_and_stops_when_interrupted(
    pulse_server, assistant, tmp_path
):
    """Laptop speakers, no headset: everything the app plays is mixed back into its microphone at full
    volume. With echo cancellation and full duplex, the first reply plays to its end without the assistant
    taking its own voice for the user; during the second reply a person (espeak-ng) speaks over it and
    the reply stops, and what they said is heard."""
    import sounddevice
    from spoken import ESPEAK, espeak_wav

    from app.commands.talk import PlaybackBuffer, Printer, talk_loop
    from app.echo import unavailable

    if unavailable() is not None or ESPEAK is None:
        pytest.skip(unavailable() or "espeak-ng is not installed")
    # A request for a long reply: the interruption must land while it plays, even on a slow, busy box.
    second_question = espeak_wav("Tell me a long story about a dragon.", tmp_path / "story.wav")
    # One sentence: after a lone "Stop." the semantic end of turn may rightly close the turn at once.
    interruption = espeak_wav("Please stop and tell me a joke instead.", tmp_path / "stop.wav")
    lines: list[str] = []
    new_line = asyncio.Condition()

    class Recorder(Printer):
        def partial(self, text: str) -> None:
            pass

        def line(self, text: str) -> None:
            lines.append(text)
            asyncio.get_running_loop().create_task(notify())

    async def notify() -> None:
        async with new_line:
            new_line.notify_all()

    async def until(predicate, timeout_s: float) -> None:
        try:
            async with new_line:
                await asyncio.wait_for(new_line.wait_for(lambda: predicate() or talk.done()), timeout_s)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out after {timeout_s} s; so far: {lines}") from None
        if talk.done():
            talk.result()  # raises what ended it
            raise AssertionError(f"talk ended early: {lines}")

    def heard() -> list[str]:
        return [line for line in lines if line.startswith("you:")]

    sounddevice._terminate()  # PortAudio caches devices: re-scan to see this test's sound server
    sounddevice._initialize()
    echo_module = pulse_server.loop_speakers_into_mic()
    config = make_config(max_reply_tokens=48)
    conv_config = dataclasses.replace(config.conversation, echo_policy="full_duplex")
    playback = PlaybackBuffer()
    talk = asyncio.create_task(
        talk_loop(assistant, conv_config, sounddevice, printer=Recorder(), playback=playback, aec=True)
    )
    talk.add_done_callback(lambda _: asyncio.get_running_loop().create_task(notify()))
    try:
        await until(lambda: any(line.startswith("listening") for line in lines), 60)
        pulse_server.speak(QUESTION_WAV).wait(30)
        await until(lambda: any(line.startswith("assistant") for line in lines), 180)
        assert await asyncio.to_thread(playback.idle.wait, 120), "the first reply never finished playing"
        # Its whole echo went back into the microphone; now the second question (a different voice).
        pulse_server.speak(second_question).wait(30)
        await until(lambda: len(heard()) >= 2, 120)
        assert await asyncio.to_thread(playback.sounding.wait, 120), "the second reply never played"
        pulse_server.speak(interruption).wait(30)
        await until(lambda: any("(interrupted)" in line for line in lines) and len(heard()) >= 3, 120)
    finally:
        talk.cancel()
        await asyncio.gather(talk, return_exceptions=True)
        pulse_server.unload(echo_module)
        sounddevice._terminate()
        sounddevice._initialize()
    said = [line for line in lines if line.startswith("assistant")]
    first_reply, second_reply = said[0], said[1]
    assert mentions_mountain(heard()[0]), lines
    assert not first_reply.startswith("assistant (interrupted)"), f"it interrupted itself: {lines}"
    assert "dragon" in heard()[1].lower(), f"its own echo was taken for the user: {lines}"
    assert second_reply.startswith("assistant (interrupted)"), lines
    # The words said over the reply reach the conversation (the canceller damages the first of them
    # while both voices overlap, as double talk does; the sentence is not checked word for word).
    assert len(heard()[2].split()) >= 3, lines
