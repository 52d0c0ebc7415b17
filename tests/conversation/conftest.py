"""Fixtures for the conversation-loop tests (helpers live in conv_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from conv_helpers import silence, trim_silence


@pytest.fixture(scope="session")
def question_audio(speak) -> Callable[..., np.ndarray]:
    """Piper-spoken text with silence around it; pieces joined by exactly `pause_ms` of silence (Piper's own
    leading/trailing silence is trimmed so the pause is what the test says)."""

    def _make(*parts: str, lead_ms: float = 400, pause_ms: float = 400, tail_ms: float = 1200) -> np.ndarray:
        chunks = [silence(lead_ms)]
        for j, part in enumerate(parts):
            if j:
                chunks.append(silence(pause_ms))
            chunks.append(trim_silence(speak(part)))
        chunks.append(silence(tail_ms))
        return np.concatenate(chunks).astype(np.float32)

    return _make


@pytest.fixture(scope="session")
def other_voice(tmp_path_factory) -> Callable[[str], np.ndarray]:
    """Speech in a voice that is not the assistant's (flite's "slt", a Debian package installed by
    scripts/system-deps.sh; of the offline voices tried, the one Whisper tiny.en hears best), 16 kHz mono
    float32, leading/trailing silence trimmed."""
    import shutil
    import subprocess

    import soundfile as sf

    from app.audio import resample

    if shutil.which("flite") is None:
        pytest.fail("flite is missing: run scripts/system-deps.sh")
    folder = tmp_path_factory.mktemp("flite")
    cache: dict[str, np.ndarray] = {}

    def _speak(text: str) -> np.ndarray:
        if text not in cache:
            wav = folder / f"{len(cache)}.wav"
            subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(wav)], check=True, capture_output=True)
            audio, rate = sf.read(wav, dtype="float32")
            cache[text] = trim_silence(resample(audio, rate, 16000))
        return cache[text]

    return _speak
