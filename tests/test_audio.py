"""Reading audio in any format, rate and channel layout; clear errors for what cannot be used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.audio import AudioError, is_silent, read_audio, resample


def _tone(rate: int, seconds: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,rate,channels", [("WAV", 44100, 2), ("FLAC", 8000, 1), ("OGG", 48000, 2),
                                               ("MP3", 22050, 1)])
def test_any_format_rate_and_layout_becomes_16k_mono(tmp_path: Path, fmt: str, rate: int, channels: int) -> None:
    tone = _tone(rate)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, data, rate, format=fmt)
    audio = read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 8000) < 2000  # 0.5 s at 16 kHz (mp3/ogg add a little padding)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 10  # still a 440 Hz tone


def test_missing_empty_and_corrupt_files_raise_audio_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no such"):
        read_audio(tmp_path / "nope.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        read_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00junk" * 100)
    with pytest.raises(AudioError, match="cannot decode"):
        read_audio(tmp_path / "junk.wav")


def test_resample_keeps_duration_and_silence_detection() -> None:
    tone = _tone(24000, seconds=1.0)
    assert len(resample(tone, 24000, 16000)) == 16000
    assert is_silent(np.zeros(16000, dtype=np.float32))
    assert is_silent((np.random.default_rng(0).standard_normal(16000) * 1e-5).astype(np.float32))
    assert not is_silent(tone)
