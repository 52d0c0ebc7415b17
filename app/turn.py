"""One spoken turn, start to finish: audio file → transcript → streamed LLM reply → Piper speech.

This is the sequential path behind `specvoice reply` (and the baseline of `bench voice`): it waits for
the whole input, but it still streams inside the turn — each clause is synthesised as soon as the LLM
has finished it, so the first audio is ready long before the reply is complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from app.assistant import Assistant
from app.audio import ASR_RATE, AudioError, is_silent


class NoSpeech(Exception):
    """The audio holds sound but no speech; not an error, there is simply nothing to answer."""


@dataclass
class TurnResult:
    transcript: str
    reply_text: str
    reply_audio: np.ndarray  # int16 mono at sample_rate
    sample_rate: int
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def reply_audio_seconds(self) -> float:
        return len(self.reply_audio) / self.sample_rate


def has_speech(audio: np.ndarray) -> bool:
    """Silero VAD (the ONNX model shipped with faster-whisper) finds at least one speech segment."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    return bool(get_speech_timestamps(audio, VadOptions(min_speech_duration_ms=150)))


def check_speech(audio: np.ndarray) -> None:
    """Raise AudioError for silent or too-short audio, NoSpeech when the VAD hears no speech in it."""
    if len(audio) < ASR_RATE // 10:
        raise AudioError(f"the audio is too short ({1000 * len(audio) / ASR_RATE:.0f} ms): nothing to answer")
    if is_silent(audio):
        raise AudioError("the audio is silent: nothing to answer")
    if not has_speech(audio):
        raise NoSpeech


def reply_to_audio(assistant: Assistant, audio: np.ndarray) -> TurnResult:
    """Answer 16 kHz mono float32 speech. Raises AudioError for silence, NoSpeech when no words are heard."""
    from tts.segmenter import Segmenter

    started = time.perf_counter()
    check_speech(audio)
    transcript = assistant.transcriber.transcribe(audio).text
    if not transcript:
        raise NoSpeech
    asr_done = time.perf_counter()

    session = assistant.new_session()
    session.add_turn(transcript)
    voice, segmenter = assistant.voice, Segmenter()
    pieces: list[np.ndarray] = []
    text_parts: list[str] = []
    first_token = first_audio = None
    tts_seconds = 0.0

    def speak(piece: str) -> None:
        nonlocal first_audio, tts_seconds
        synth_started = time.perf_counter()
        for chunk in voice.synthesize(piece):
            pieces.append(chunk)
            if first_audio is None:
                first_audio = time.perf_counter()
        tts_seconds += time.perf_counter() - synth_started

    for delta in session.generate(max_tokens=assistant.config.llm.max_reply_tokens):
        if first_token is None:
            first_token = time.perf_counter()
        text_parts.append(delta.text)
        for piece in segmenter.push(delta.text):
            speak(piece)
    llm_done = time.perf_counter()
    for piece in segmenter.flush():
        speak(piece)
    finished = time.perf_counter()

    def ms(a: float | None, b: float) -> float:
        return round(1000 * ((a if a is not None else finished) - b), 1)

    timings = {
        "asr": ms(asr_done, started),
        "llm_first_token": ms(first_token, asr_done),
        "llm_total": ms(llm_done, asr_done) - round(1000 * _tts_during_llm(tts_seconds, llm_done, finished), 1),
        "tts": round(1000 * tts_seconds, 1),
        "tts_first_audio": ms(first_audio, started),
        "total": ms(finished, started),
    }
    audio_out = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
    return TurnResult(transcript, "".join(text_parts).strip(), audio_out, voice.sample_rate, timings)


def _tts_during_llm(tts_seconds: float, llm_done: float, finished: float) -> float:
    """Synthesis runs between LLM steps; subtract the part of it that happened before the LLM finished."""
    return max(0.0, tts_seconds - (finished - llm_done))
