"""The engine with a draft model, on two small RANDOM-WEIGHT models sharing one vocabulary (this is a test
of the algorithm, not of model quality): the draft is the target's weights plus noise, so it agrees often
but not always, exercising acceptance, correction, bonus tokens and rollback of both caches.
"""

from __future__ import annotations

import pytest
import torch
from llm_testutil import random_model, tiny_args, two_token_chi2

from llm.drafters import ModelDrafter, NgramDrafter
from llm.engine import AdaptiveK, generate_ids
from llm.model import Transformer
from llm.sampling import SamplingParams

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


def test_sampling_distribution_equals_target_at_fixed_prefix():
    """4 000 speculative replies from one prefix: the first two tokens follow the target's exact joint law
    (chi-square at significance 1e-4 over cells with expected count >= 5)."""
    target, draft = models()
    params = SamplingParams(temperature=1.0, top_p=0.95)
    context = [1, 5, 2, 7, 3]
    cache, drafter, g = target.new_cache(64), ModelDrafter(draft, 64), torch.Generator().manual_seed(3)
    target(torch.tensor(context[:-1]), cache, 0)
    draws = 4_000
    chi2, critical, accepted, rare = two_token_chi2(target, cache, context, drafter, params, g, draws, VOCAB)
    assert accepted > 0
    assert chi2 < critical, f"chi2={chi2:.1f} >= {critical:.1f}"
    # The draft's own law differs from the target's: this test would notice a lossy engine.
    assert rare <= draws * 0.01
