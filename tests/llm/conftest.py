"""Fixtures for the LLM tests: the real SmolLM2 (fp32, loaded once per run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def smol(llm_model_dir: Path):
    """(target, tokenizer) for the real default model in fp32 on CPU."""
    from llm.loading import load_model

    return load_model(llm_model_dir, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def hf_smol(llm_model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llm_model_dir, dtype=torch.float32).eval()
