"""Fixtures for the LLM tests: the real SmolLM2 (fp32, loaded once per run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def smol(llm_model_dir: Path):
    """(target, tokenizer) for the real default model in fp32 on CPU, prepared as the product prepares it
    (fused q/k/v and gate/up projections; fp32 keeps dense weights)."""
    from llm.backends import prepare_model, select_backend
    from llm.loading import load_model

    target, tokenizer = load_model(llm_model_dir, dtype=torch.float32, device="cpu")
    prepare_model(target, select_backend("cpu", "float32"), quant="auto", source=llm_model_dir)
    assert target.layers[0].self_attn.qkv_proj is not None
    return target, tokenizer


@pytest.fixture(scope="session")
def hf_smol(llm_model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llm_model_dir, dtype=torch.float32).eval()


@pytest.fixture
def one_thread():
    """Tiny random-weight models are dominated by thread synchronisation (dramatically so on a busy
    2-core machine): one intra-op thread is much faster for them. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
