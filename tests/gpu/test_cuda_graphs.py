"""The CUDA-graph step path (position as a device tensor, padded verify sizes, rollback by pointer),
run eagerly on CPU: the same code a GPU captures. Random-weight small models: these tests are about the
algorithm (equal logits / equal tokens), not about model quality."""

from __future__ import annotations

import pytest
import torch

from llm.cuda_graphs import GraphedModel, GraphedStep, static_forward
from llm.model import ModelArgs, Transformer

ARGS = ModelArgs(vocab_size=131, dim=64, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=16,
                 intermediate_size=96, max_positions=256, qkv_bias=True)  # fmt: skip


@pytest.fixture(scope="module")
def model() -> Transformer:
    return Transformer.random(ARGS, seed=3, std=0.1)


def test_static_forward_equals_model_forward_with_rollback(model):
    tokens = torch.randint(0, ARGS.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    eager, static = model.new_cache(64), model.new_cache(64)
    for start, t in ((0, 12), (12, 1), (13, 5), (15, 3), (18, 9), (16, 1)):  # (15, 3), (16, 1): rollbacks
        a = model(tokens[start : start + t], eager, start)
        with torch.inference_mode():
            b = static_forward(model, tokens[start : start + t], torch.tensor([start]), static)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_graphed_step_pads_and_refuses_what_does_not_fit(model):
    cache = model.new_cache(32)
    step = GraphedStep(model, cache, 5)
    assert step.graph is None and step.use_graph is False  # CPU: the static path runs eagerly
    reference_cache = model.new_cache(32)
    prompt = torch.arange(10)
    model(prompt, reference_cache, 0)
    with torch.inference_mode():
        static_forward(model, prompt, torch.tensor([0]), cache)
    out = step(torch.tensor([3, 4, 5]), 10)  # 3 tokens through the 5-token step: 2 padded rows dropped
    assert out.shape == (3, ARGS.vocab_size)
    torch.testing.assert_close(out, model(torch.tensor([3, 4, 5]), reference_cache, 10), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        step(torch.arange(6), 0)
    with pytest.raises(ValueError, match="do not fit"):
        step(torch.arange(2), 28)


def test_graphed_model_is_a_drop_in_for_the_engine(model):
    """Greedy generation through GraphedModel (1-token and padded (k+1)-token steps) = plain model."""
    from llm.drafters import NgramDrafter
    from llm.engine import AdaptiveK, generate_ids

    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    plain, _ = generate_ids(model, prompt, 20, drafter=NgramDrafter(), k=AdaptiveK(1, 8))
    graphed_model = GraphedModel(model, sizes=(1, 9))
    graphed, steps = generate_ids(graphed_model, prompt, 20, drafter=NgramDrafter(), k=AdaptiveK(1, 8))
    assert graphed == plain
    assert any(s.drafted > 1 for s in steps)
    assert graphed_model.args is model.args and graphed_model.new_cache(8).max_len == 8
