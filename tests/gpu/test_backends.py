"""Backend selection: the real CPU path, and GPU machines simulated by replacing the few torch.cuda
queries the selection reads (the logic under test is ours; the hardware answers are the inputs)."""

from __future__ import annotations

import pytest
import torch

from app.config import ConfigError
from llm.backends import BackendUnavailable, prepare_model, select_backend


def test_cpu_defaults_and_requests():
    auto = select_backend("auto", "auto")
    if torch.cuda.is_available():
        pytest.skip("CPU defaults are checked on CPU-only machines")
    assert auto.device.type == "cpu" and auto.dtype == torch.bfloat16 and not auto.fp8
    assert select_backend("cpu", "bfloat16").dtype == torch.bfloat16
    fp8 = select_backend("cpu", "fp8")
    assert fp8.fp8 and fp8.dtype == torch.float32 and "emulated" in fp8.reason
    assert not select_backend("cpu", "fp8", role="draft").fp8


def test_impossible_requests_say_why():
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="CUDA is not available"):
            select_backend("cuda", "auto")
    with pytest.raises(BackendUnavailable, match="unknown dtype"):
        select_backend("cpu", "int3")
    with pytest.raises(BackendUnavailable, match="unknown device"):
        select_backend("tpu:0", "auto")
    from app.cli import user_errors

    assert issubclass(BackendUnavailable, user_errors())  # the CLI prints it as one line, exit code 2


class FakeGPU:
    """Answers torch.cuda's questions as a machine with one GPU of the given compute capability."""

    def __init__(self, monkeypatch, capability: tuple[int, int], name: str) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: 1)
        monkeypatch.setattr(cuda, "current_device", lambda: 0)
        monkeypatch.setattr(cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(cuda, "get_device_name", lambda device=None: name)


def test_hopper_gets_fp8_for_the_h100_profile(monkeypatch):
    FakeGPU(monkeypatch, (9, 0), "NVIDIA H200")
    target = select_backend("auto", "auto", profile="gpu-h100")
    assert target.device == torch.device("cuda", 0) and target.fp8 and target.dtype == torch.bfloat16
    draft = select_backend("auto", "auto", profile="gpu-h100", role="draft")
    assert not draft.fp8 and draft.dtype == torch.bfloat16
    assert not select_backend("auto", "auto", profile="gpu-local").fp8  # bf16 unless asked
    assert select_backend("cuda", "fp8").fp8
    with pytest.raises(BackendUnavailable, match="1 CUDA device"):
        select_backend("cuda:3", "auto")


def test_ampere_refuses_fp8_and_turing_refuses_bf16(monkeypatch):
    FakeGPU(monkeypatch, (8, 6), "NVIDIA GeForce RTX 3090")
    with pytest.raises(BackendUnavailable, match=r"compute capability ≥ 8\.9.*RTX 3090.*bfloat16"):
        select_backend("cuda", "fp8")
    assert select_backend("auto", "auto", profile="gpu-h100").dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert select_backend("auto", "auto").dtype == torch.float16
    with pytest.raises(BackendUnavailable, match="float16"):
        select_backend("cuda", "bfloat16")


def test_graphed_wraps_only_on_cuda():
    from llm.backends import graphed
    from llm.cuda_graphs import GraphedModel

    model = torch.nn.Linear(2, 2)
    assert graphed(model, select_backend("cpu", "auto"), 8) is model
    fake_cuda = select_backend("cpu", "auto").__class__(torch.device("cuda", 0), torch.bfloat16)
    wrapped = graphed(model, fake_cuda, 8)
    assert isinstance(wrapped, GraphedModel) and wrapped.sizes == (1, 9)


def test_prepare_model_applies_fp8_on_cpu():
    """Random weights: this checks the wiring (which modules change), not model quality."""
    from llm.fp8 import FP8Linear, FusedRMSNormFP8Linear
    from llm.model import ModelArgs, Transformer

    args = ModelArgs(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                     intermediate_size=64, max_positions=64)  # fmt: skip
    model = Transformer.random(args, seed=0)
    tokens = torch.arange(7)
    before = model(tokens, model.new_cache(16), 0)
    prepare_model(model, select_backend("cpu", "fp8"))
    assert isinstance(model.layers[0].self_attn.q_proj, FusedRMSNormFP8Linear)
    assert isinstance(model.layers[1].self_attn.o_proj, FP8Linear)
    after = model(tokens, model.new_cache(16), 0)
    assert float((after - before).norm() / before.norm()) < 0.1


def test_prepare_model_fp8_options_reach_the_layers():
    """Random weights, wiring only: GPTQ calibration changes the fp8 codes (not the format), act_terms
    reaches every FP8 layer, fused ones included."""
    from llm.fp8 import FP8Linear, fp8_linears
    from llm.model import ModelArgs, Transformer

    args = ModelArgs(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                     intermediate_size=64, max_positions=64)  # fmt: skip
    calibration = [list(range(i, i + 40)) for i in range(0, 50, 10)]
    nearest, gptq = Transformer.random(args, seed=0), Transformer.random(args, seed=0)
    prepare_model(nearest, select_backend("cpu", "fp8"), act_terms=1)
    prepare_model(gptq, select_backend("cpu", "fp8"), calibration=calibration)
    a, b = dict(fp8_linears(nearest)), dict(fp8_linears(gptq))
    assert a.keys() == b.keys() and len(a) == 2 * 7
    assert {m.act_terms for m in a.values()} == {1} and {m.act_terms for m in b.values()} == {2}
    assert all(isinstance(m, FP8Linear) and m.weight_fp8.dtype == torch.float8_e4m3fn for m in b.values())
    assert any(not torch.equal(a[n].weight_fp8, b[n].weight_fp8) for n in a)


def test_bad_fp8_options_are_refused_before_loading():
    from app.assistant import load_engine
    from app.config import load_config
    from app.profiles import resolve_profile

    for setting, value, message in (
        ("llm.fp8_rounding", "best", "gptq, nearest"),
        ("llm.fp8_act_terms", "3", "1 or 2"),
    ):
        config = load_config(environ={}, overrides={setting: value})
        with pytest.raises(ConfigError, match=message):
            load_engine(resolve_profile(config), config, offline=True)
