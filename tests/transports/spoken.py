"""Test speech in a voice that is not the assistant's (espeak-ng, a Debian package), written to WAV files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ESPEAK = shutil.which("espeak-ng")


def espeak_wav(text: str, path: Path, voice: str = "en-us", words_per_minute: int = 150) -> Path:
    """Speak `text` with espeak-ng into `path` (22.05 kHz mono WAV)."""
    if ESPEAK is None:
        raise RuntimeError("espeak-ng is not installed (Debian: espeak-ng)")
    subprocess.run(
        [ESPEAK, "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path
