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
