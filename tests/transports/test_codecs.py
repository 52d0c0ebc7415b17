"""G.711 and pcm16 helpers: bit-exact against the reference encoder, strict about broken input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from app.server import codecs

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def _audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:  # Python >= 3.13
            return None
    return audioop


@pytest.mark.skipif(_audioop() is None, reason="audioop (the reference) left the stdlib in Python 3.13")
def test_g711_is_bit_exact_with_the_reference_for_every_sample_and_code():
    audioop = _audioop()
    raw = ALL_SAMPLES.tobytes()
    assert codecs.ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(raw, 2)
    assert codecs.alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(raw, 2)
    assert codecs.ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    assert codecs.alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)


def test_g711_known_values_and_round_trip_error():
    # Standard anchors: digital silence is 0xFF in μ-law and 0xD5 in A-law; full scale saturates.
    assert codecs.ulaw_encode(np.array([0, 32767, -32768], np.int16)) == bytes([0xFF, 0x80, 0x00])
    assert codecs.alaw_encode(np.array([0], np.int16)) == bytes([0xD5])
    tone = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000) * 20000).astype(np.int16)
    for encode, decode in (
        (codecs.ulaw_encode, codecs.ulaw_decode),
        (codecs.alaw_encode, codecs.alaw_decode),
    ):
        back = decode(encode(tone)).astype(np.float64)
        snr = 10 * np.log10(np.sum(tone.astype(np.float64) ** 2) / np.sum((back - tone) ** 2))
        assert snr > 30, snr  # G.711 gives ~38 dB on a loud tone


def test_pcm16_rejects_odd_length_and_base64_rejects_junk():
    assert codecs.pcm16_decode(b"\x01\x00\xff\xff").tolist() == [1, -1]
    with pytest.raises(codecs.AudioFormatError, match="even number"):
        codecs.pcm16_decode(b"\x00\x00\x00")
    with pytest.raises(codecs.AudioFormatError, match="base64"):
        codecs.b64decode_strict("not base64!")
    with pytest.raises(codecs.AudioFormatError):
        codecs.b64decode_strict(1234)
    assert codecs.b64decode_strict(codecs.b64encode(b"abc")) == b"abc"


def test_stream_resampler_keeps_length_across_chunks():
    resampler = codecs.StreamResampler(24000, 8000)
    chunks = [resampler.process(np.full(480, 1000, np.int16)) for _ in range(50)]
    total = sum(len(c) for c in chunks) + len(resampler.process(np.zeros(0, np.int16), last=True))
    assert total == 50 * 160
