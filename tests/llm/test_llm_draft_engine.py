"""The engine with a draft model, on two small RANDOM-WEIGHT models sharing one vocabulary (this is a test
of the algorithm, not of model quality): the draft is the target's weights plus noise, so it agrees often
but not always, exercising acceptance, correction, bonus tokens and rollback of both caches.
"""

from __future__ import annotations

import math

import pytest
import torch
from llm_testutil import random_model, tiny_args

from llm.drafters import ModelDrafter, NgramDrafter
from llm.engine import AdaptiveK, generate_ids, speculative_step
from llm.model import Transformer
from llm.sampling import SamplingParams, probabilities

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 8


def noisy_copy(model: Transformer, noise: float, seed: int) -> Transformer:
    g = torch.Generator().manual_seed(seed)
    state = {k: v + noise * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    return Transformer.from_state_dict(model.args, state)


def models() -> tuple[Transformer, Transformer]:
    target = random_model(tiny_args(vocab_size=VOCAB, n_layers=2), seed=1, std=0.5)
    return target, noisy_copy(target, noise=0.15, seed=2)


def test_greedy_speculative_equals_plain_decoding():
    target, draft = models()
    g = torch.Generator().manual_seed(0)
    accepted = drafted = 0
    for trial in range(6):
        prompt = torch.randint(0, VOCAB, (5 + trial,), generator=g).tolist()
        plain, _ = generate_ids(target, prompt, 40)
        spec, steps = generate_ids(target, prompt, 40, drafter=ModelDrafter(draft, 128), k=AdaptiveK(1, 6))
        assert spec == plain
        ngram, _ = generate_ids(target, prompt, 40, drafter=NgramDrafter(), k=AdaptiveK(1, 6))
        assert ngram == plain
        drafted += sum(s.drafted for s in steps)
        accepted += sum(s.accepted for s in steps)
    assert 0 < accepted < drafted, "the draft should be right sometimes and wrong sometimes"


def exact_two_token_law(target: Transformer, context: list[int], params: SamplingParams) -> torch.Tensor:
    """p(t1) * p(t2 | t1) from the target alone, flattened over VOCAB x VOCAB."""
    cache = target.new_cache(64)
    logits = target(torch.tensor(context), cache, 0)
    p1 = probabilities(logits[-1], params)
    joint = torch.zeros(VOCAB, VOCAB)
    for t1 in range(VOCAB):
        joint[t1] = p1[t1] * probabilities(target(torch.tensor([t1]), cache, len(context))[-1], params)
    return joint.flatten()


def test_sampling_distribution_equals_target_at_fixed_prefix():
    """4 000 speculative replies from one prefix: the first two tokens follow the target's exact joint law
    (chi-square at significance 1e-4 over cells with expected count >= 5)."""
    target, draft = models()
    params = SamplingParams(temperature=1.0, top_p=0.95)
    context = [1, 5, 2, 7, 3]
    expected = exact_two_token_law(target, context, params)
    cache, drafter, g = target.new_cache(64), ModelDrafter(draft, 64), torch.Generator().manual_seed(3)
    target(torch.tensor(context[:-1]), cache, 0)
    draws, counts, accepted = 4_000, torch.zeros(VOCAB * VOCAB), 0
    for _ in range(draws):
        step = speculative_step(target, cache, context, drafter, 2, params, g)
        tokens = step.tokens
        accepted += step.accepted
        if len(tokens) == 1:
            tokens = tokens + speculative_step(target, cache, context + tokens, drafter, 2, params, g).tokens
        counts[tokens[0] * VOCAB + tokens[1]] += 1
    cells = expected * draws >= 5
    exp_counts = expected[cells] * draws
    chi2 = float(((counts[cells] - exp_counts) ** 2 / exp_counts).sum())
    df = int(cells.sum()) - 1
    c = 2.0 / (9.0 * df)
    critical = df * (1.0 - c + 3.719 * math.sqrt(c)) ** 3
    assert accepted > 0
    assert chi2 < critical, f"chi2={chi2:.1f} >= {critical:.1f} (df={df})"
    # The draft's own law differs from the target's: this test would notice a lossy engine.
    assert float((counts[~cells]).sum()) <= draws * 0.01
