"""Wire audio formats: G.711 μ-law / A-law (telephony, Realtime `audio/pcmu`/`audio/pcma`) and pcm16.

`audioop` left the standard library in Python 3.13, so G.711 is done here in numpy with lookup tables:
decoding is a 256-entry table, encoding a 65536-entry table indexed by the int16 sample, both built once
from the ITU-T G.711 bit layout. Resampling goes through `app.audio.resample` (soxr) or, for streams cut
into chunks, `StreamResampler`, which keeps the filter state between chunks so chunk edges do not click.
"""

from __future__ import annotations

import base64
import binascii
from functools import cache

import numpy as np

ULAW_BIAS = 0x84
ULAW_CLIP14 = 8159
ULAW_BIAS14 = 0x21


class AudioFormatError(ValueError):
    """Audio bytes that cannot be decoded in the declared format (bad base64, odd pcm16 length...)."""


def _ulaw_encode_values(x: np.ndarray) -> np.ndarray:
    """μ-law codes of int32 samples, the classic 14-bit G.711 encoder (bit-exact with Sun's g711.c)."""
    v = x >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(v), ULAW_CLIP14) + ULAW_BIAS14
    segment = np.floor(np.log2(magnitude)).astype(np.int32) - 5
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _ulaw_decode_values(codes: np.ndarray) -> np.ndarray:
    u = ~codes.astype(np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_encode_values(x: np.ndarray) -> np.ndarray:
    """A-law codes: positive samples carry the sign bit, even bits are inverted (xor 0x55)."""
    sign = np.where(x >= 0, 0x80, 0x00)
    magnitude = np.where(x >= 0, x, -x - 1)  # one's-complement magnitude, as G.711 defines it
    magnitude = np.minimum(magnitude, 32767)
    big = magnitude >= 256
    exponent = np.where(big, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 7, 0)
    mantissa = np.where(big, (magnitude >> (exponent + 3)) & 0x0F, magnitude >> 4)
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8)


def _alaw_decode_values(codes: np.ndarray) -> np.ndarray:
    a = codes.astype(np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


@cache
def _tables() -> dict[str, np.ndarray]:
    every_sample = np.arange(-32768, 32768, dtype=np.int32)
    every_code = np.arange(256, dtype=np.int32)
    return {
        "ulaw_enc": _ulaw_encode_values(every_sample),
        "ulaw_dec": _ulaw_decode_values(every_code),
        "alaw_enc": _alaw_encode_values(every_sample),
        "alaw_dec": _alaw_decode_values(every_code),
    }


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples → μ-law bytes (one byte per sample)."""
    return _tables()["ulaw_enc"][pcm.astype(np.int32) + 32768].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """μ-law bytes → int16 samples."""
    return _tables()["ulaw_dec"][np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: np.ndarray) -> bytes:
    return _tables()["alaw_enc"][pcm.astype(np.int32) + 32768].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    return _tables()["alaw_dec"][np.frombuffer(data, dtype=np.uint8)]


def pcm16_decode(data: bytes) -> np.ndarray:
    """Little-endian int16 bytes → int16 samples; an odd byte count is a broken frame, not silence."""
    if len(data) % 2:
        raise AudioFormatError(f"pcm16 audio must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)


def pcm16_encode(pcm: np.ndarray) -> bytes:
    if pcm.dtype != np.int16:
        pcm = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)
    return pcm.astype("<i2", copy=False).tobytes()


def b64decode_strict(text: object) -> bytes:
    """Base64 that rejects junk characters instead of silently skipping them (the stdlib default)."""
    if not isinstance(text, str):
        raise AudioFormatError("audio must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioFormatError(f"audio is not valid base64 ({exc})") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# name -> (decode bytes -> int16, encode int16 -> bytes, fixed sample rate or None for pcm16's own rate)
CODECS = {
    "pcm16": (pcm16_decode, pcm16_encode),
    "g711_ulaw": (ulaw_decode, ulaw_encode),
    "g711_alaw": (alaw_decode, alaw_encode),
}


def decode_audio(data: bytes, codec: str) -> np.ndarray:
    return CODECS[codec][0](data)


def encode_audio(pcm: np.ndarray, codec: str) -> bytes:
    return CODECS[codec][1](pcm)


class StreamResampler:
    """Resample a stream of int16 chunks keeping soxr's filter state across chunks (one per reply)."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._stream = None
        if from_rate != to_rate:
            import soxr

            self._stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="int16")

    def process(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return pcm
        return self._stream.resample_chunk(pcm.astype(np.int16, copy=False), last=last)
