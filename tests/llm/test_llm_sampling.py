"""Lossless rejection sampling: what the speculative rule emits must follow the target's distribution p.

Synthetic distributions (no model): for each case we draw >= 100 000 speculative steps with real
`llm.sampling.accept_sampled` and compare the emitted tokens' histogram with p by a chi-square test at
significance 1e-4 (critical value from the Wilson-Hilferty approximation) and total variation <= 0.01.
Deliberately broken rules (accept every draft; residual = p instead of max(p - q, 0)) fail the same test.
"""

from __future__ import annotations

import math

import pytest
import torch

from llm.sampling import SamplingParams, accept_greedy, accept_sampled, probabilities, sample

pytestmark = pytest.mark.usefixtures("one_thread")
DRAWS = 100_000
V = 10
TV_LIMIT = 0.01  # sampling noise at 100k draws over 10 categories is ~0.003


def chi2_critical(df: int, z: float = 3.719) -> float:
    """Upper 1e-4 quantile (z = 3.719) of chi-square(df), Wilson-Hilferty approximation."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def matches(counts: torch.Tensor, expected: torch.Tensor) -> tuple[bool, float, float]:
    """(passes, chi2 statistic vs its critical value ratio, total variation) for counts against probabilities."""
    n = float(counts.sum())
    empirical = counts / n
    tv = 0.5 * float((empirical - expected).abs().sum())
    support = expected > 0
    if bool((counts[~support] > 0).any()):
        return False, math.inf, tv
    exp_counts = expected[support] * n
    chi2 = float(((counts[support] - exp_counts) ** 2 / exp_counts).sum())
    ratio = chi2 / chi2_critical(int(support.sum()) - 1)
    return ratio < 1.0 and tv <= TV_LIMIT, ratio, tv


def accept_always(p, draft, q, generator):
    """Broken: trusts the drafter completely (emits q's law)."""
    return len(draft), sample(p[len(draft)], generator)


def residual_from_p(p, draft, q, generator):
    """Broken: on rejection resamples from p itself instead of norm(max(p - q, 0))."""
    uniforms = torch.rand(len(draft), generator=generator, dtype=torch.float64).tolist()
    for i, token in enumerate(draft):
        q_token = 1.0 if q is None else float(q[i, token])
        if uniforms[i] * q_token >= float(p[i, token]):
            return i, sample(p[i], generator)
    return len(draft), sample(p[len(draft)], generator)


def first_token_counts(
    rule, p: torch.Tensor, q: torch.Tensor | None, point: int | None, seed: int
) -> torch.Tensor:
    """Histogram of the first emitted token over DRAWS one-draft steps (draft ~ q, or the point mass)."""
    generator = torch.Generator().manual_seed(seed)
    if q is None:
        drafts = [point] * DRAWS
    else:
        drafts = torch.multinomial(q[0], DRAWS, replacement=True, generator=generator).tolist()
    counts = torch.zeros(V)
    for d in drafts:
        n_accepted, token = rule(p, [d], q, generator)
        counts[d if n_accepted else token] += 1
    return counts


def case(name: str) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    """(p rows [2, V], q rows [1, V] or None, point-mass draft) for a named scenario."""
    g = torch.Generator().manual_seed(11)
    target_logits, draft_logits = torch.randn(2, V, generator=g), torch.randn(1, V, generator=g)
    params = {
        "plain": SamplingParams(temperature=1.0),
        "temperature_top_p": SamplingParams(temperature=0.7, top_p=0.8),
        "top_k": SamplingParams(temperature=1.3, top_k=4),
        "point_mass": SamplingParams(temperature=0.9, top_p=0.9),
    }[name]
    p = probabilities(target_logits, params)
    assert int((p[0] > 0).sum()) >= 4, "the scenario should keep several tokens"
    if name == "point_mass":
        return p, None, int(p[0].argsort()[-2])  # the second most likely token: rejected ~half of the time
    return p, probabilities(draft_logits, params), None


@pytest.mark.parametrize("name", ["plain", "temperature_top_p", "top_k", "point_mass"])
def test_rejection_sampling_reproduces_target(name):
    p, q, point = case(name)
    counts = first_token_counts(accept_sampled, p, q, point, seed=1)
    ok, ratio, tv = matches(counts, p[0])
    assert ok, f"{name}: chi2/critical={ratio:.2f}, TV={tv:.4f}"


@pytest.mark.parametrize("broken", [accept_always, residual_from_p])
def test_broken_rules_fail_the_same_test(broken):
    p, q, point = case("temperature_top_p")
    counts = first_token_counts(broken, p, q, point, seed=1)
    ok, ratio, tv = matches(counts, p[0])
    assert not ok, f"{broken.__name__} passed (chi2/critical={ratio:.2f}, TV={tv:.4f}): the test has no power"


def test_two_drafts_joint_law_and_bonus_row():
    """k=2 drafts, 100 000 draws: the first two emitted tokens (accepted drafts, correction, bonus) follow
    p0 x p1 jointly."""
    g = torch.Generator().manual_seed(7)
    params = SamplingParams(temperature=0.8, top_p=0.95)
    p = probabilities(torch.randn(3, V, generator=g) * 2, params)
    q = probabilities(torch.randn(2, V, generator=g) * 2, params)
    drafts = torch.stack(
        [torch.multinomial(q[i], DRAWS, replacement=True, generator=g) for i in range(2)], 1
    ).tolist()
    counts = torch.zeros(V * V)
    for d in drafts:
        n_accepted, token = accept_sampled(p, d, q, g)
        emitted = [*d[:n_accepted], token]
        if len(emitted) == 1:  # the next step would draw from the target's row 1
            emitted.append(sample(p[1], g))
        counts[emitted[0] * V + emitted[1]] += 1
    ok, ratio, tv = matches(counts, torch.outer(p[0], p[1]).flatten())
    assert ratio < 1.0, f"chi2/critical={ratio:.2f}, TV={tv:.4f}"


def test_greedy_acceptance_and_processing():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    assert accept_greedy(logits, [1, 0]) == (2, 2)  # both accepted, bonus = argmax of the last row
    assert accept_greedy(logits, [1, 2]) == (1, 0)  # second rejected, correction = argmax of row 1
    probs = probabilities(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), SamplingParams(temperature=1.0, top_k=2))
    assert probs[0, :2].sum() == 0 and abs(float(probs.sum()) - 1) < 1e-6
    nucleus = probabilities(torch.tensor([[10.0, 0.0, 0.0]]), SamplingParams(temperature=1.0, top_p=0.5))
    assert nucleus.tolist() == [[1.0, 0.0, 0.0]]
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
