"""Smart Turn v3.2: the probability that the speaker has finished, from the sound of the last <= 8 s.

The model (BSD-2-Clause, an ONNX Whisper-encoder classifier) hears intonation and rhythm that a transcript
loses: a falling pitch at the end of a statement, the drawn-out last syllable of someone thinking. It takes
Whisper-style log-mel features of exactly 8 s of 16 kHz audio (zeros in front when shorter, the last 8 s
when longer), the waveform first normalised to zero mean and unit variance, and returns a sigmoid
probability of "complete".

The features are computed here with numpy (what Whisper's feature extractor does, at a 25 ms window and a
10 ms hop): a centred (reflect-padded) periodic-Hann STFT, power spectrum, 80 Slaney mel bands over
0-8 kHz, log10 floored at 1e-10, the dynamic range clamped to 8 decades below the maximum, and the
(x + 4) / 4 scaling. The last STFT frame is dropped so that 8 s give exactly 800 frames.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

RATE = 16000
WINDOW_S = 8
N_FFT = 400
HOP = 160
N_MELS = 80


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3.0 / 200.0
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * 200.0 / 3.0
    logarithmic = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, logarithmic, linear)


@cache
def mel_filters() -> np.ndarray:
    """[N_MELS, N_FFT // 2 + 1] triangular filters, each scaled to unit area (Slaney normalisation)."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(RATE / 2), N_MELS + 2))
    bins = np.linspace(0.0, RATE / 2, N_FFT // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    triangles = np.clip(np.minimum(rising, falling), 0.0, None)
    return triangles * (2.0 / (upper - lower))


def log_mel(audio: np.ndarray) -> np.ndarray:
    """[80, 800] float32 features of the last 8 s of 16 kHz mono audio (zero-padded in front)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = RATE * WINDOW_S
    window = np.zeros(n, dtype=np.float32)
    tail = audio[-n:]
    window[n - tail.size :] = tail
    window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    padded = np.pad(window.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic
    power = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2  # [frames, bins]
    mel = np.log10(np.maximum(power @ mel_filters().T, 1e-10)).T[:, :-1]
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


class SmartTurn:
    """The ONNX model on one CPU thread (it runs beside ASR and the LLM; ~60-140 ms per call here)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def probability(self, audio: np.ndarray) -> float:
        """P(the turn is complete) for 16 kHz mono float audio ending now (only the last 8 s count)."""
        if np.asarray(audio).size == 0:
            raise ValueError("smart turn needs some audio")
        features = log_mel(audio)[None]
        out = self._session.run(None, {self._input: features})[0]
        return float(np.asarray(out).reshape(-1)[0])
