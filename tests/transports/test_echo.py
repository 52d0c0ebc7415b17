"""Echo cancellation (app/echo.py, WebRTC AEC3) on real audio: the assistant's own Piper voice played by
"speakers", heard back by the microphone late, quieter and through a small room response; a person in
another voice (espeak-ng) talks over it. The canceller must remove the echo so that the real Silero VAD
stays silent on it, while the person's speech still comes through."""

from __future__ import annotations

import numpy as np
import pytest
from spoken import ESPEAK, espeak_wav
from transport_support import QUESTION_WAV

from app.echo import APM_RATE, EchoCanceller, unavailable

pytestmark = pytest.mark.skipif(
    unavailable() is not None or ESPEAK is None, reason=str(unavailable() or "espeak-ng is not installed")
)
RATE = APM_RATE
BLOCK = RATE // 50  # 20 ms, as PortAudio would hand them over


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def speech_frames(audio: np.ndarray) -> int:
    from asr.vad import StreamingVAD

    return int((StreamingVAD().process(audio.astype(np.float32)) > 0.5).sum())


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Speaker signal (reply twice, 7 s), and a user sentence in another voice."""
    from app.audio import read_audio

    reply = read_audio(QUESTION_WAV, rate=RATE)
    speaker = np.concatenate([np.zeros(RATE // 2, np.float32), reply, reply, np.zeros(RATE, np.float32)])
    user_wav = espeak_wav(
        "Wait, stop please. What about the weather?", tmp_path_factory.mktemp("echo") / "u.wav"
    )
    return speaker, read_audio(user_wav, rate=RATE)


def room_echo(speaker: np.ndarray, delay_ms: int) -> np.ndarray:
    """Late, at half the level, with two reflections (a linear echo path, as loudspeaker to mic is)."""
    response = np.zeros(RATE * 30 // 1000, np.float32)
    response[0], response[RATE * 7 // 1000], response[RATE * 19 // 1000] = 1.0, 0.4, -0.2
    echo = 0.5 * np.convolve(speaker, response)[: speaker.size]
    return np.concatenate([np.zeros(RATE * delay_ms // 1000, np.float32), echo])[: speaker.size]


def cancel(speaker: np.ndarray, mic: np.ndarray, delay_hint_ms: int) -> np.ndarray:
    from app.audio import to_int16

    canceller = EchoCanceller(delay_ms=delay_hint_ms)
    out = []
    for start in range(0, speaker.size - BLOCK + 1, BLOCK):
        canceller.render(to_int16(speaker[start : start + BLOCK]), RATE)
        out.append(canceller.capture(to_int16(mic[start : start + BLOCK]), RATE))
    return np.concatenate(out).astype(np.float32) / 32768


# 150 ms: a laptop with short buffers, found by the canceller itself; 600 ms: longer than WebRTC
# searches, covered by the delay line from the device latency hint.
@pytest.mark.parametrize(("delay_ms", "hint_ms"), [(150, 0), (600, 600)])
def test_echo_is_removed_and_the_user_still_comes_through(scene, delay_ms, hint_ms):
    speaker, user = scene
    echo = room_echo(speaker, delay_ms)
    mic = echo + np.random.default_rng(0).normal(0, 1e-3, echo.size).astype(np.float32)
    user_at = speaker.size // 2
    mic[user_at : user_at + user.size] += 0.7 * user
    cleaned = cancel(speaker, mic, hint_ms)

    echo_only = slice(RATE // 2 + RATE * delay_ms // 1000 + RATE, user_at)  # after one second of echo
    erle = db(mic[echo_only]) - db(cleaned[echo_only])
    assert erle >= 20.0, f"echo only {erle:.1f} dB weaker"
    # The VAD takes the raw echo for speech (what a half-duplex guard exists for) but not what is left.
    assert speech_frames(mic[:user_at]) > 50
    assert speech_frames(cleaned[:user_at]) == 0
    # The person talking over the echo is still heard: most of their voiced frames survive.
    during = cleaned[user_at : user_at + user.size]
    assert speech_frames(during) >= 0.6 * speech_frames(user)
