"""Audio in and out: decode any file to 16 kHz mono float32, resample with soxr, write WAV."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

ASR_RATE = 16000


class AudioError(ValueError):
    """Audio that cannot be used: missing, empty, corrupt or in an unknown format."""


def read_audio(path: str | Path, rate: int = ASR_RATE) -> np.ndarray:
    """Decode wav/flac/ogg/mp3 (anything libsndfile reads) at any rate and channel count → mono float32."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"no such audio file: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file is empty: {path}")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for corrupt data
        raise AudioError(f"cannot decode {path.name}: {str(exc).strip() or type(exc).__name__}") from None
    if data.size == 0:
        raise AudioError(f"audio file has no samples: {path}")
    return resample(data.mean(axis=1), file_rate, rate)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 resampling (soxr, high quality). int16 input is scaled to [-1, 1]."""
    import soxr

    x = to_float32(samples)
    if from_rate <= 0 or to_rate <= 0:
        raise AudioError(f"bad sample rate {from_rate} -> {to_rate}")
    if from_rate == to_rate or x.size == 0:
        return x
    return soxr.resample(x, from_rate, to_rate).astype(np.float32, copy=False)


def to_float32(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return np.ascontiguousarray(samples, dtype=np.float32)


def to_int16(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.int16:
        return samples
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def is_silent(samples: np.ndarray, threshold_dbfs: float = -50.0) -> bool:
    """True when the loudest 20 ms window is quieter than `threshold_dbfs` (digital silence, hiss)."""
    x = to_float32(samples)
    if x.size == 0:
        return True
    window = 320
    n = max(1, x.size // window)
    frames = x[: n * window].reshape(n, -1) if x.size >= window else x.reshape(1, -1)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)).max()
    return bool(20 * np.log10(rms + 1e-12) < threshold_dbfs)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_int16(samples).tobytes())
    return buf.getvalue()


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    """Write atomically so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(wav_bytes(samples, rate))
    tmp.replace(path)
