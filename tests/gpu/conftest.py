"""Fixtures for the GPU-path tests, which must pass on a CPU-only machine.

Triton kernels run on CPU under Triton's interpreter. Triton reads TRITON_INTERPRET when a kernel is
decorated, i.e. when `kernels.triton_kernels` is first imported (our wrappers import it lazily, on first
use), so setting it here, before any test runs, is enough. Where CUDA exists the kernels are compiled and
the tests run on the GPU instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@pytest.fixture(scope="session")
def triton_available() -> bool:
    from kernels.dispatch import triton_importable

    if not triton_importable():
        pytest.skip("triton is not installed")
    return True


@pytest.fixture(scope="session")
def smol_fp32(llm_model_dir: Path):
    """(model, tokenizer): the real SmolLM2-135M-Instruct in fp32 on CPU."""
    from llm.loading import load_model

    return load_model(llm_model_dir, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def smol_fp8(llm_model_dir: Path):
    """The same weights with every linear layer but the LM head in FP8 as the fp8 backend prepares them by
    default (GPTQ rounding on the packaged calibration text, two activation terms; on CPU exact emulation
    and batch-invariant attention), unfused."""
    from llm.backends import prepare_model, select_backend
    from llm.gptq import calibration_sequences
    from llm.loading import load_model

    model, tokenizer = load_model(llm_model_dir, dtype=torch.float32, device="cpu")
    calibration = calibration_sequences(tokenizer)
    return prepare_model(model, select_backend("cpu", "fp8"), fuse_norm=False, calibration=calibration)
