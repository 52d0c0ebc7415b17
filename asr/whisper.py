"""Offline (whole-utterance) transcription with faster-whisper on CTranslate2."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Word:
    start: float  # seconds from the start of the audio given to transcribe()
    end: float
    text: str
    probability: float = 1.0


@dataclass(frozen=True)
class Transcript:
    text: str
    words: list[Word] = field(default_factory=list)
    seconds: float = 0.0  # wall time the decode took


class Transcriber:
    """A loaded Whisper model. Calls are serialised: CTranslate2 already uses every core for one decode."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", compute_type: str = "int8",
                 cpu_threads: int = 0, language: str | None = "en") -> None:
        from faster_whisper import WhisperModel

        started = time.perf_counter()
        self.model = WhisperModel(str(model_dir), device=device, compute_type=compute_type,
                                  cpu_threads=cpu_threads)
        self.language = language
        self.load_seconds = time.perf_counter() - started
        self._lock = threading.Lock()
        log.info("loaded whisper from %s in %.2fs", model_dir, self.load_seconds)

    def transcribe(self, audio: np.ndarray, prompt: str | None = None, word_timestamps: bool = False,
                   beam_size: int = 1) -> Transcript:
        """Transcribe 16 kHz mono float32 audio. Greedy (beam 1) by default: lowest latency."""
        started = time.perf_counter()
        with self._lock:
            segments, _info = self.model.transcribe(
                np.ascontiguousarray(audio, dtype=np.float32),
                language=self.language,
                beam_size=beam_size,
                initial_prompt=prompt or None,
                word_timestamps=word_timestamps,
                condition_on_previous_text=False,
                vad_filter=False,
                without_timestamps=not word_timestamps,
            )
            segments = list(segments)
        words = [
            Word(w.start, w.end, w.word, w.probability)
            for s in segments
            for w in (s.words or [])
        ]
        text = " ".join(s.text.strip() for s in segments).strip()
        return Transcript(text=text, words=words, seconds=time.perf_counter() - started)
