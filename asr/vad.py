"""Streaming Silero VAD: the ONNX model that ships inside faster-whisper (no download), run frame by frame.

Silero v6 scores 512-sample frames (32 ms at 16 kHz), each preceded by the last 64 samples of the previous
frame, and carries an LSTM state (h, c) from frame to frame. The loaded ONNX session is shared by every
conversation (onnxruntime sessions are thread-safe); the state lives in one `StreamingVAD` per stream.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

RATE = 16000
FRAME = 512  # samples per scored frame (32 ms)
CONTEXT = 64  # samples of the previous frame the model sees in front of each frame
FRAME_MS = 1000.0 * FRAME / RATE


def default_model_path() -> Path:
    """The Silero VAD ONNX file inside the installed faster-whisper package."""
    from faster_whisper.utils import get_assets_path

    path = Path(get_assets_path()) / "silero_vad_v6.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"Silero VAD model not found in faster-whisper's assets: {path}")
    return path


@functools.lru_cache(maxsize=4)
def load_session(path: str | None = None):
    """One onnxruntime session per model file, single-threaded: a frame costs well under a millisecond."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4
    return onnxruntime.InferenceSession(
        os.fspath(path or default_model_path()), providers=["CPUExecutionProvider"], sess_options=opts
    )


class StreamingVAD:
    """Speech probabilities for a 16 kHz stream pushed in pieces of any size; keeps the LSTM state."""

    def __init__(self, model_path: str | os.PathLike[str] | None = None) -> None:
        self._session = load_session(os.fspath(model_path) if model_path else None)
        self.reset()

    def reset(self) -> None:
        """Forget the stream (new conversation, or audio that was muted in between)."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_scored = 0

    def process(self, audio16k: np.ndarray) -> np.ndarray:
        """Score every complete 32 ms frame now available; a remainder waits for the next call."""
        x = np.ascontiguousarray(audio16k, dtype=np.float32).reshape(-1)
        if self._pending.size:
            x = np.concatenate([self._pending, x])
        n = x.size // FRAME
        self._pending = x[n * FRAME :].copy()
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        frames = x[: n * FRAME].reshape(n, FRAME)
        contexts = np.empty((n, CONTEXT), dtype=np.float32)
        contexts[0] = self._context
        contexts[1:] = frames[:-1, -CONTEXT:]
        self._context = frames[-1, -CONTEXT:].copy()
        batch = np.concatenate([contexts, frames], axis=1)
        probs, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self.frames_scored += n
        return np.asarray(probs, dtype=np.float32).reshape(-1)[:n]
