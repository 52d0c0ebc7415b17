"""Spoken questions for `specvoice bench voice`, in voices that are not the assistant's own.

The assistant speaks with Piper (joe); a bench in that voice flatters the ASR and the end-of-turn models.
So the questions are spoken by other engines from the system's packages: espeak-ng (several variants)
and flite (slt, kal). A paused question is two halves synthesised separately and joined by a pause of
room tone (low-level noise, never digital zero: a VAD or a turn model sees a real recording's floor, not
a gap), its length drawn from 300-1200 ms. `snr_db` adds noise at that signal-to-noise ratio to the whole
clip. The texts are in bench/data/voice_questions.txt; everything is seeded, so a run is reproducible.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 16000
QUESTIONS_FILE = Path(__file__).resolve().parent / "data" / "voice_questions.txt"
# (engine, voice, words per minute); none of them is Piper. flite rms/awb are left to the training set of
# the turn-taking rule, so bench and training never share a voice.
VOICES = [
    ("espeak-ng", "en-us", 165),
    ("flite", "slt", 0),
    ("espeak-ng", "en+f3", 155),
    ("flite", "kal", 0),
    ("espeak-ng", "en+m7", 170),
    ("espeak-ng", "en-gb-x-rp+f4", 160),
]
PAUSE_RANGE_MS = (300, 1200)
SPEECH_RMS_DBFS = -22.0  # speech is levelled to this before noise is added
ROOM_TONE_DBFS = -62.0  # the floor of a quiet room (RMS)
LEAD_MS = 300


class VoiceUnavailable(RuntimeError):
    """A speech engine the bench needs is not installed (scripts/system-deps.sh installs them)."""


@dataclass
class SpokenQuestion:
    text: str
    parts: tuple[str, ...]
    voice: str  # "engine:voice"
    audio: np.ndarray  # 16 kHz float32: lead room tone, speech (halves joined by a pause), tail room tone
    eos_sample: int  # just after the last voiced sample
    pause_ms: float | None  # the mid-sentence pause, None for a plain question

    @property
    def paused(self) -> bool:
        return self.pause_ms is not None

    @property
    def eos_ms(self) -> float:
        return 1000.0 * self.eos_sample / RATE


def load_texts(path: Path = QUESTIONS_FILE) -> list[tuple[str, ...]]:
    """Question texts as tuples of parts (two parts where the speaker pauses)."""
    texts = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            texts.append(tuple(p.strip() for p in line.split("|")))
    return texts


def check_engines() -> None:
    missing = sorted({engine for engine, _, _ in VOICES if shutil.which(engine) is None})
    if missing:
        raise VoiceUnavailable(
            f"bench voice needs {', '.join(missing)} (Debian packages; run scripts/system-deps.sh)"
        )


def synthesize(text: str, engine: str, voice: str, wpm: int) -> np.ndarray:
    """16 kHz float32 speech from espeak-ng or flite, leading/trailing silence trimmed."""
    import soundfile as sf

    from app.audio import resample

    with tempfile.TemporaryDirectory(prefix="specvoice-bench-") as tmp:
        wav = Path(tmp) / "q.wav"
        if engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text]
        else:
            cmd = ["flite", "-voice", voice, "-t", text, "-o", str(wav)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        audio, rate = sf.read(wav, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    audio = resample(audio, rate, RATE)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def pink_noise(n: int, rng: np.random.Generator, rms_dbfs: float) -> np.ndarray:
    """1/f noise (the spectrum of room tone and of most background noise) at the given RMS level."""
    spectrum = np.fft.rfft(rng.standard_normal(n + 1))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n + 1)[:n]
    noise /= max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    return (noise * 10 ** (rms_dbfs / 20)).astype(np.float32)


def level(audio: np.ndarray, rms_dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
    return audio * (10 ** (rms_dbfs / 20) / rms) if rms > 0 else audio


def pause_lengths(count: int, rng: np.random.Generator) -> list[float]:
    """Stratified draw from PAUSE_RANGE_MS: one pause per equal slice, shuffled, so every length is covered."""
    lo, hi = PAUSE_RANGE_MS
    edges = np.linspace(lo, hi, count + 1)
    pauses = [float(rng.uniform(a, b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    rng.shuffle(pauses)
    return [round(p) for p in pauses]


@dataclass(frozen=True)
class PlannedQuestion:
    """What a question will be (text, voice, pause) before any audio is made."""

    index: int
    parts: tuple[str, ...]
    engine: str
    voice: str
    wpm: int
    pause_ms: float | None


def plan(texts: list[tuple[str, ...]] | None = None, seed: int = 0) -> list[PlannedQuestion]:
    """Voices in turn, pauses drawn (seeded) for the paused questions."""
    texts = texts if texts is not None else load_texts()
    pauses = iter(pause_lengths(sum(len(t) > 1 for t in texts), np.random.default_rng(seed)))
    return [
        PlannedQuestion(i, parts, *VOICES[i % len(VOICES)], next(pauses) if len(parts) > 1 else None)
        for i, parts in enumerate(texts)
    ]


def select(planned: list[PlannedQuestion], limit: int | None) -> list[PlannedQuestion]:
    """The first `limit` questions, plain and paused interleaved (a short run still has both kinds)."""
    if limit is None:
        return planned
    plain = [p for p in planned if p.pause_ms is None]
    paused = [p for p in planned if p.pause_ms is not None]
    mixed = [x for pair in zip(plain, paused, strict=False) for x in pair]
    return (mixed + [p for p in planned if p not in mixed])[:limit]


def render(
    p: PlannedQuestion, snr_db: float | None = None, tail_s: float = 8.0, seed: int = 0
) -> SpokenQuestion:
    """Synthesise the halves, join them with room tone, add noise (seeded per question: same clip every run)."""
    rng = np.random.default_rng([seed, p.index])
    halves = []
    for j, part in enumerate(p.parts):
        # A trailing comma gives espeak-ng's continuing (not final) intonation for the first half.
        spoken = part if j == len(p.parts) - 1 else part.rstrip(",") + ","
        halves.append(synthesize(spoken, p.engine, p.voice, p.wpm))
    speech = level(np.concatenate(halves), SPEECH_RMS_DBFS)
    halves = np.split(speech, np.cumsum([len(h) for h in halves])[:-1])
    gap = np.zeros(int(RATE * (p.pause_ms or 0) / 1000), np.float32)
    lead = np.zeros(RATE * LEAD_MS // 1000, np.float32)
    clean = np.concatenate([lead, *(x for h in halves[:-1] for x in (h, gap)), halves[-1]])
    eos = len(clean)
    clean = np.concatenate([clean, np.zeros(int(RATE * tail_s), np.float32)])
    audio = clean + pink_noise(len(clean), rng, ROOM_TONE_DBFS)
    if snr_db is not None:
        speech_rms_db = 10 * np.log10(np.mean(speech**2))
        audio = audio + pink_noise(len(clean), rng, speech_rms_db - snr_db)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    return SpokenQuestion(" ".join(p.parts), p.parts, f"{p.engine}:{p.voice}", audio, eos, p.pause_ms)


def build_questions(
    limit: int | None = None,
    snr_db: float | None = None,
    tail_s: float = 8.0,
    seed: int = 0,
    texts: list[tuple[str, ...]] | None = None,
) -> list[SpokenQuestion]:
    """The bench's questions as 16 kHz clips; `limit` keeps the first N, interleaving plain and paused."""
    check_engines()
    return [render(p, snr_db, tail_s, seed) for p in select(plan(texts, seed), limit)]
