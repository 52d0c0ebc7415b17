"""Acoustic echo cancellation for loudspeakers: WebRTC's audio processing (AEC3) through the `livekit`
SDK's AudioProcessingModule (optional extra `specvoice[aec]`).

Why: without it, `talk` on laptop speakers must be half duplex (deaf while the assistant speaks), or the
assistant hears its own voice and interrupts itself. With the speaker signal cancelled out of the
microphone, the conversation can listen all the time, so the user can interrupt by speaking.

The canceller needs the speaker signal (the far end) *before* the microphone picks up its echo. PortAudio
runs playback and capture on two threads: `render` is called from the playback callback and only queues
what was played; `capture`, called from the capture callback, first feeds that queue to the canceller and
then cleans the microphone block. So every call into the canceller happens on one thread, in the order the
audio happened. The canceller estimates the echo path's delay itself (room, device buffers, a sound
server's loopback); `delay_ms` is only its starting hint.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

APM_RATE = 16000  # the canceller's rate: what `capture` returns
FRAME = APM_RATE // 100  # it processes exactly 10 ms frames
_HINT_MS = 200  # the largest delay hint we give WebRTC; beyond it, a delay line
_MAX_QUEUED_RENDER = 200  # playback blocks waiting for the capture thread (a few seconds); older ones drop


def unavailable() -> str | None:
    """None when echo cancellation can run here, else one line saying why not."""
    try:
        from livekit import rtc  # noqa: F401
    except ImportError:
        return "echo cancellation needs the livekit package: pip install 'specvoice[aec]'"
    except OSError as exc:  # the wheel's native library cannot load on this system
        return f"echo cancellation is not available here ({exc})"
    return None


class _Resampler:
    """Streaming int16 resampling to the canceller's rate (soxr keeps state across blocks)."""

    def __init__(self, from_rate: int) -> None:
        import soxr

        self.from_rate = from_rate
        self._stream = (
            None if from_rate == APM_RATE else soxr.ResampleStream(from_rate, APM_RATE, 1, dtype="int16")
        )

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        if self._stream is None:
            return pcm
        return self._stream.resample_chunk(pcm)


class _Framer:
    """Cuts a stream of any block sizes into 10 ms frames; the remainder waits for the next block."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, np.int16)

    def frames(self, pcm: np.ndarray) -> list[np.ndarray]:
        x = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        n = x.size // FRAME
        self._pending = x[n * FRAME :].copy()
        return [x[i * FRAME : (i + 1) * FRAME] for i in range(n)]


class EchoCanceller:
    """Removes what the speakers played from what the microphone hears (mono int16 in, 16 kHz int16 out)."""

    def __init__(self, delay_ms: int = 0, noise_suppression: bool = False) -> None:
        from livekit import rtc

        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=True, noise_suppression=noise_suppression, high_pass_filter=True
        )
        # WebRTC searches for the echo around a delay hint of at most a few hundred ms, and it pairs
        # speaker and microphone frames by the order of the calls. A longer echo path is covered by
        # holding speaker frames back ourselves (a delay line counted in frames), the rest by the hint.
        self.delay_ms = max(0, int(delay_ms))
        self._held_frames = max(0, self.delay_ms - _HINT_MS) // 10
        self._hint_ms = self.delay_ms - 10 * self._held_frames
        self._held: collections.deque[np.ndarray] = collections.deque()
        self._render_queue: collections.deque[tuple[np.ndarray, int]] = collections.deque(
            maxlen=_MAX_QUEUED_RENDER
        )
        self._render_resampler: _Resampler | None = None
        self._capture_resampler: _Resampler | None = None
        self._render_framer = _Framer()
        self._capture_framer = _Framer()

    def render(self, pcm: np.ndarray, rate: int) -> None:
        """What the speakers are about to play (silence included, so both sides keep the same clock).
        Safe to call from the playback thread: it only queues a copy."""
        self._render_queue.append((np.array(pcm, dtype=np.int16, copy=True).reshape(-1), rate))

    def capture(self, pcm: np.ndarray, rate: int) -> np.ndarray:
        """Clean one microphone block; returns the echo-free audio at APM_RATE (possibly a little shorter
        or longer than the block: whole 10 ms frames only, the rest follows with the next block)."""
        while self._render_queue:
            block, render_rate = self._render_queue.popleft()
            if self._render_resampler is None or self._render_resampler.from_rate != render_rate:
                self._render_resampler = _Resampler(render_rate)
            self._held.extend(self._render_framer.frames(self._render_resampler(block)))
        while len(self._held) > self._held_frames:
            self._apm.process_reverse_stream(self._frame(self._held.popleft()))
        if self._capture_resampler is None or self._capture_resampler.from_rate != rate:
            self._capture_resampler = _Resampler(rate)
        cleaned = []
        for frame in self._capture_framer.frames(self._capture_resampler(np.asarray(pcm, np.int16))):
            audio = self._frame(frame)
            self._apm.set_stream_delay_ms(self._hint_ms)  # WebRTC asks for it before every frame
            self._apm.process_stream(audio)
            cleaned.append(np.frombuffer(audio.data, dtype=np.int16).copy())
        return np.concatenate(cleaned) if cleaned else np.zeros(0, np.int16)

    def _frame(self, samples: np.ndarray) -> Any:
        frame = self._rtc.AudioFrame.create(APM_RATE, 1, FRAME)
        np.frombuffer(frame.data, dtype=np.int16)[:] = samples
        return frame
