"""Fixtures for the tool tests: the real default tokenizer (SmolLM2) and its vocabulary, built once."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smol_tokenizer(llm_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_model_dir)


@pytest.fixture(scope="session")
def smol_vocab(smol_tokenizer):
    from llm.token_mask import Vocabulary

    return Vocabulary.of(smol_tokenizer)


@pytest.fixture(scope="session")
def smol(llm_model_dir: Path):
    """(target, tokenizer) of the real default model in fp32 on CPU, loaded once."""
    import torch

    from llm.loading import load_model

    return load_model(llm_model_dir, dtype=torch.float32, device="cpu")
