"""Real Whisper (tiny.en) and real Piper (joe): the fixture transcribes, and speech survives a round trip."""

from __future__ import annotations

import re

import numpy as np


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def test_jfk_fixture_transcribes(transcriber, jfk_audio) -> None:
    text = transcriber.transcribe(jfk_audio).text
    assert "ask not what your country can do for you" in " ".join(_words(text))


def test_word_timestamps_are_ordered_and_inside_the_audio(transcriber, jfk_audio) -> None:
    words = transcriber.transcribe(jfk_audio, word_timestamps=True).words
    assert len(words) >= 20
    starts = [w.start for w in words]
    assert starts == sorted(starts) and 0 <= starts[0] and words[-1].end <= len(jfk_audio) / 16000 + 0.5


SENTENCES = [
    "The weather in Paris is sunny with a light breeze today.",
    "Please remind me to call my sister at seven o'clock tonight.",
    "How many kilometers are there between London and Edinburgh?",
]


def test_piper_to_whisper_round_trip_recovers_the_words(voice, transcriber, speak) -> None:
    import jiwer

    assert voice.sample_rate == 22050
    recovered = []
    for sentence in SENTENCES:
        audio = speak(sentence)
        assert 1.0 < len(audio) / 16000 < 8.0 and np.abs(audio).max() > 0.05
        recovered.append(transcriber.transcribe(audio).text)
    # word accuracy over all three sentences, numbers normalised the way Whisper may write them
    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    refs = [s.replace("seven o'clock", "7 oclock") for s in SENTENCES]
    hyps = [h.replace("7 o'clock", "7 oclock").replace("seven o'clock", "7 oclock")
            .replace("7:00", "7 oclock") for h in recovered]
    wer = jiwer.wer(refs, hyps, reference_transform=norm, hypothesis_transform=norm)
    assert wer <= 0.10, (wer, recovered)


def test_voice_synthesises_nothing_for_blank_text(voice) -> None:
    assert voice.synthesize_all("   ").size == 0
