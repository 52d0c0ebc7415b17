"""Microphone audio as transports deliver it (any rate, int16 bytes or float/int16 arrays) -> 16 kHz frames.

Each source rate gets its own streaming soxr resampler, so 20 ms packets join without clicks (only the
last few rates are kept: a client cycling through rates must not grow memory); the output is cut into the
512-sample frames the VAD scores, the remainder waiting for the next packet.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RATE = 16000
KEPT_RESAMPLERS = 2


def to_float_mono(pcm: Any) -> np.ndarray:
    """float32 in [-1, 1] from int16 LE bytes, or an int16/float mono array. Bad input -> ValueError/TypeError."""
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        if len(pcm) % 2:
            raise ValueError("int16 PCM bytes must have an even length")
        return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if not isinstance(pcm, np.ndarray):
        raise TypeError(f"audio must be a numpy array or bytes, got {type(pcm).__name__}")
    if pcm.ndim == 2 and 1 in pcm.shape:
        pcm = pcm.reshape(-1)
    if pcm.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    if np.issubdtype(pcm.dtype, np.floating):
        return np.nan_to_num(pcm.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    raise ValueError(f"audio must be float or int16, got {pcm.dtype}")


class InputAudio:
    """Turns pushed packets into complete 16 kHz frames of `frame` samples."""

    def __init__(self, frame: int) -> None:
        self.frame = frame
        self._resamplers: dict[int, Any] = {}
        self._pending = np.zeros(0, dtype=np.float32)

    def frames(self, pcm: Any, sample_rate: int) -> np.ndarray:
        """[n, frame] float32 (n may be 0)."""
        if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
        x = to_float_mono(pcm)
        if sample_rate != RATE:
            import soxr

            stream = self._resamplers.pop(sample_rate, None)
            if stream is None:
                stream = soxr.ResampleStream(sample_rate, RATE, 1, dtype="float32")
                while len(self._resamplers) >= KEPT_RESAMPLERS:
                    self._resamplers.pop(next(iter(self._resamplers)))  # the least recently used rate
            self._resamplers[sample_rate] = stream  # (re)inserted last: most recently used
            x = stream.resample_chunk(x).astype(np.float32, copy=False)
        x = np.concatenate([self._pending, x]) if self._pending.size else x
        n = x.size // self.frame
        self._pending = x[n * self.frame :].copy()
        return x[: n * self.frame].reshape(n, self.frame)
