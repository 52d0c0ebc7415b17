"""Incremental synthesis: one speakable piece at a time, out in small PCM chunks at the sink's rate.

`PieceSynthesizer.synthesize(text)` is the blocking part (Piper, then soxr to the sink's rate) and is meant
to run in a worker thread while the LLM keeps generating the next piece. It returns a `SpokenPiece` that
also knows how long it is, so a barge-in can be mapped back to the words the listener really heard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpokenPiece:
    text: str
    chunks: list[bytes]  # int16 little-endian mono PCM at `sample_rate`
    sample_rate: int
    seconds: float  # wall time synthesis took

    @property
    def duration_ms(self) -> float:
        return 1000.0 * sum(len(c) for c in self.chunks) / 2 / self.sample_rate


class PieceSynthesizer:
    """Wraps a loaded Piper `Voice` (shared); output resampled to `out_rate` and cut into `chunk_ms` chunks."""

    def __init__(self, voice, out_rate: int, chunk_ms: int = 40) -> None:
        if out_rate <= 0:
            raise ValueError(f"output sample rate must be positive, got {out_rate}")
        self.voice = voice
        self.out_rate = out_rate
        self.chunk_samples = max(1, out_rate * chunk_ms // 1000)

    def synthesize(self, text: str) -> SpokenPiece:
        started = time.perf_counter()
        parts = list(self.voice.synthesize(text))
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        audio = resample_int16(audio, self.voice.sample_rate, self.out_rate)
        chunks = [
            audio[i : i + self.chunk_samples].astype("<i2").tobytes()
            for i in range(0, audio.size, self.chunk_samples)
        ]
        return SpokenPiece(text, chunks, self.out_rate, time.perf_counter() - started)


def resample_int16(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate or audio.size == 0:
        return audio.astype(np.int16, copy=False)
    import soxr

    return soxr.resample(audio.astype(np.int16, copy=False), from_rate, to_rate)


def words_heard(pieces: list[tuple[str, float]], played_ms: float) -> str:
    """The text a listener heard after `played_ms` of audio made of (text, duration_ms) pieces.

    Whole pieces count when fully played; inside the piece being played, words are timed by their share of
    the piece's characters and kept once their estimated end was reached.
    """
    heard: list[str] = []
    start = 0.0
    for text, duration in pieces:
        end = start + duration
        if played_ms >= end - 1e-6:
            heard.append(text)
        elif played_ms > start:
            words = text.split()
            total = sum(len(w) + 1 for w in words) or 1
            elapsed, spoken = 0, []
            for word in words:
                elapsed += len(word) + 1
                if start + duration * elapsed / total <= played_ms:
                    spoken.append(word)
                else:
                    break
            if spoken:
                heard.append(" ".join(spoken))
            break
        else:
            break
        start = end
    return " ".join(heard)
