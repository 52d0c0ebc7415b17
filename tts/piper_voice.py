"""A Piper voice: text in, int16 PCM out, one sentence chunk at a time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class Voice:
    """A loaded Piper (VITS, ONNX) voice. Synthesis is serialised; onnxruntime uses all cores per call."""

    def __init__(self, onnx_path: str | Path, length_scale: float = 1.0, speaker: int | None = None) -> None:
        from piper import PiperVoice, SynthesisConfig

        onnx_path = Path(onnx_path)
        if not onnx_path.with_name(onnx_path.name + ".json").is_file():
            raise FileNotFoundError(f"Piper voice config missing: {onnx_path}.json")
        started = time.perf_counter()
        self._voice = PiperVoice.load(str(onnx_path))
        self._syn_config = SynthesisConfig(length_scale=length_scale, speaker_id=speaker)
        self.sample_rate: int = self._voice.config.sample_rate
        self.load_seconds = time.perf_counter() - started
        self._lock = threading.Lock()
        log.info("loaded piper voice %s in %.2fs", onnx_path.name, self.load_seconds)

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Yield int16 mono chunks (Piper splits sentences) at `self.sample_rate`; nothing for empty text."""
        if not text.strip():
            return
        with self._lock:
            chunks = list(self._voice.synthesize(text, syn_config=self._syn_config))
        for chunk in chunks:
            yield np.frombuffer(chunk.audio_int16_bytes, dtype=np.int16)

    def synthesize_all(self, text: str) -> np.ndarray:
        parts = list(self.synthesize(text))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
