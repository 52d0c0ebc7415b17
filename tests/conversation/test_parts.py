"""The building blocks of the conversation loop: VAD, LocalAgreement streaming, segmenter, heard words."""

from __future__ import annotations

import numpy as np
import pytest
from conv_helpers import words

from asr.streaming import ShortWindowDecoder, StreamingTranscriber, common_prefix_length, loop_start
from asr.vad import FRAME, StreamingVAD
from tts.segmenter import Segmenter
from tts.stream import PieceSynthesizer, words_heard


def test_vad_streaming_equals_one_batch_and_finds_speech(jfk_audio):
    vad = StreamingVAD()
    streamed = np.concatenate([vad.process(jfk_audio[i : i + 333]) for i in range(0, len(jfk_audio), 333)])
    vad.reset()
    whole = vad.process(jfk_audio)
    assert len(whole) == len(jfk_audio) // FRAME == len(streamed)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)  # state carried across odd-sized pieces
    assert whole.max() > 0.8  # speech
    assert StreamingVAD().process(np.zeros(16000, np.float32)).max() < 0.2  # silence


def test_streaming_transcriber_commits_only_agreed_growing_text(transcriber, jfk_audio):
    stream = StreamingTranscriber(ShortWindowDecoder(transcriber.model))
    committed: list[str] = []
    for end in range(9600, len(jfk_audio) + 9600, 9600):
        stream.append(jfk_audio[end - 9600 : end])
        job = stream.snapshot()
        partial = stream.apply(job, stream.decode(job))
        assert partial.committed.startswith(committed[-1] if committed else "")
        committed.append(partial.committed)
    offline = transcriber.transcribe(jfk_audio).text
    assert words(stream.final_text()) == words(offline)
    assert len(words(committed[-1])) >= 15  # most words were committed while "speaking"


def test_loop_guard_cuts_whisper_repetitions():
    assert loop_start("and so and so and so".split()) == 2
    assert loop_start("What is the capital of France? What is".split()) == 6
    assert loop_start("ask not what your country can do for you ask what you can do".split()) is None
    assert common_prefix_length(["Americans,", "ask"], ["americans", "asked"]) == 1


def test_segmenter_first_piece_is_short_and_nothing_is_lost():
    seg = Segmenter()
    text = (
        "Sure, I can help with that. The capital of France is Paris, a city of art. Dr. Lee says 3.5 is fine."
    )
    pieces: list[str] = []
    for token in text.replace(" ", " \x00").split("\x00"):  # word-sized deltas, spaces kept
        pieces += seg.push(token)
    pieces += seg.flush()
    assert pieces[0] == "Sure,"
    assert "Dr. Lee says 3.5 is fine." in pieces  # no cut inside an abbreviation or a number
    assert " ".join(pieces) == text
    seg = Segmenter()
    first = [p for tok in "The quick brown fox jumps over the lazy dog".split() for p in seg.push(tok + " ")]
    assert first and len(first[0].split()) <= 4  # no punctuation: a few words, not the whole sentence
    seg = Segmenter()  # deltas as an LLM's tokenizer writes them: the space leads the word
    first = [p for tok in ["The", " weather", " in", " Bos", "ton", " today", " is"] for p in seg.push(tok)]
    assert first == ["The weather in"], first
    assert Segmenter().push("**Hello** there, `friend` ") == ["Hello there,"]
    # A clause handed over at once (a speculative step accepts many tokens): the first piece is still short.
    assert Segmenter().push("Set a timer for 20 minutes, please. ") == [
        "Set a timer",
        "for 20 minutes, please.",
    ]


def test_words_heard_maps_played_audio_to_text():
    pieces = [("Sure,", 400.0), ("the capital of France is Paris.", 1600.0)]
    assert words_heard(pieces, 0) == ""
    assert words_heard(pieces, 399) == ""
    assert words_heard(pieces, 400) == "Sure,"
    half = words_heard(pieces, 1200).split()
    assert half[0] == "Sure," and 2 <= len(half) <= 5
    assert words_heard(pieces, 10_000) == "Sure, the capital of France is Paris."


@pytest.mark.parametrize("rate", [8000, 22050, 48000])
def test_piece_synthesizer_outputs_the_sinks_rate(voice, rate):
    piece = PieceSynthesizer(voice, rate, chunk_ms=40).synthesize("Hello there.")
    assert piece.sample_rate == rate and len(piece.chunks) > 3
    assert all(len(c) == rate * 40 // 1000 * 2 for c in piece.chunks[:-1])
    assert 300 < piece.duration_ms < 3000
    samples = np.frombuffer(b"".join(piece.chunks), dtype="<i2")
    assert np.abs(samples).max() > 1000  # real speech, not silence
