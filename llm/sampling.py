"""Logit processing and the lossless speculative acceptance rule.

One function, `probabilities`, turns logits into the sampling distribution (temperature → top-k → top-p).
It is applied identically to the target's rows (p) and the draft model's rows (q): if q were processed
differently from p, the acceptance rule below would no longer reproduce p exactly.

The rule (Leviathan et al. / Chen et al.): a drafted token d drawn from q is accepted with probability
min(1, p(d)/q(d)); on the first rejection the step samples from norm(max(p - q, 0)) and stops; if all k
drafts survive, a bonus token is sampled from the target's (k+1)-th row. A drafter without a distribution
(prompt lookup) is a point mass: q(d) = 1, so acceptance is p(d) and the residual is p with d removed.
Greedy decoding is the temperature-0 limit: accept while the draft equals the target's argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"invalid sampling parameters {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = SamplingParams()


def probabilities(logits: Tensor, params: SamplingParams) -> Tensor:
    """fp32 probabilities [..., V] after temperature, top-k and top-p (the HF order). Greedy → one-hot argmax."""
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the mass of the tokens strictly before it already reaches top_p (keeps >= 1).
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = mass_before >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(probs: Tensor, generator: torch.Generator | None = None) -> int:
    """One draw from a 1-D distribution."""
    return int(torch.multinomial(probs, 1, generator=generator))


def choose(logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """The next token from one row of logits (argmax when greedy)."""
    if params.greedy:
        return int(logits.argmax())
    return sample(probabilities(logits, params), generator)


def accept_greedy(target_logits: Tensor, draft: list[int]) -> tuple[int, int]:
    """Accept drafts while they equal the target's argmax. Returns (n_accepted, correction or bonus)."""
    argmax = target_logits.argmax(-1).tolist()
    for i, token in enumerate(draft):
        if token != argmax[i]:
            return i, argmax[i]
    return len(draft), argmax[len(draft)]


def accept_sampled(
    p: Tensor, draft: list[int], q: Tensor | None, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Lossless rejection sampling. p: [k+1, V] target probabilities; q: [k, V] draft probabilities or None
    for a point-mass drafter. Returns (n_accepted, next token drawn from the residual or the bonus row)."""
    if len(draft) == 0:
        return 0, sample(p[0], generator)
    uniforms = torch.rand(len(draft), generator=generator, dtype=torch.float64).tolist()
    for i, token in enumerate(draft):
        p_token = float(p[i, token])
        q_token = 1.0 if q is None else float(q[i, token])
        if q_token > 0 and uniforms[i] * q_token < p_token:  # u < p/q without dividing
            continue
        if q is None:
            residual = p[i].clone()
            residual[token] = 0.0
        else:
            residual = (p[i] - q[i]).clamp_min(0.0)
        total = float(residual.sum())
        if total <= 0.0:  # p == q up to rounding: a rejection here has probability ~0; fall back to p
            residual, total = p[i], float(p[i].sum())
        return i, sample(residual / total, generator)
    return len(draft), sample(p[len(draft)], generator)


def accept(
    target_logits: Tensor,
    draft: list[int],
    q: Tensor | None,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Dispatch on greedy vs sampled; target_logits: [k+1, V] raw fp32 logits."""
    if params.greedy:
        return accept_greedy(target_logits, draft)
    return accept_sampled(probabilities(target_logits, params), draft, q, generator)
