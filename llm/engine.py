"""Speculative decoding: draft k tokens, verify k+1 positions in one target forward, keep the target's law.

`speculative_step` is the whole algorithm for one step. Its invariant: the target's cache holds
`context[:-1]` and the last token of `context` is *pending* (not yet fed). The step feeds
[pending, d1..dk] at position len(context)-1 and gets k+1 rows of logits: row i scores the token after
d_i (row 0 the token after `pending`). The acceptance rule (llm/sampling.py) keeps a prefix d1..dm and
draws one more token x from the target (a correction when a draft was rejected, a bonus when all k were
accepted). The cache then validly holds context + d1..dm, x becomes the new pending token, and the rejected
positions are rolled back simply by the next step writing from that position: no recomputation.

With k = 0 (or no drafter) the step is plain autoregressive decoding — one 1-token forward per token.

`Engine` bundles what sessions share: the target, its tokenizer, the draft model's weights (if any), the
drafter kind and the adaptive-k range. Each `Session` gets its own caches and drafter state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llm.drafters import Draft, Drafter, ModelDrafter, NgramDrafter
from llm.model import KVCache, Transformer

if TYPE_CHECKING:
    from llm.draft_head import DraftHead
from llm.sampling import SamplingParams, accept

DRAFTER_KINDS = ("ngram", "model", "head", "none")


@dataclass
class StepResult:
    tokens: list[int]  # accepted drafts + the target's own token (always >= 1 token)
    drafted: int
    accepted: int
    draft_s: float
    verify_s: float


@dataclass
class StepPlan:
    """The first half of a speculative step: the tokens to feed (pending + drafts) at `position`."""

    position: int
    fed: list[int]
    draft: Draft
    started: float
    drafted_at: float


def plan_step(
    cache: KVCache,
    context: list[int],
    drafter: Drafter | None,
    k: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> StepPlan:
    """Draft up to k tokens after `context` (its last token pending); the verify forward comes next."""
    k = max(0, min(k, cache.max_len - len(context)))  # the verify must fit the cache
    started = time.perf_counter()
    draft = drafter.propose(context, k, params, generator) if drafter is not None and k > 0 else Draft([])
    return StepPlan(len(context) - 1, [context[-1], *draft.tokens], draft, started, time.perf_counter())


def finish_step(
    plan: StepPlan,
    logits: torch.Tensor,
    hidden: torch.Tensor | None,
    drafter: Drafter | None,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> StepResult:
    """The second half: accept a prefix of the draft from the verify's [k+1, V] logits, draw one more."""
    n_accepted, next_token = accept(logits, plan.draft.tokens, plan.draft.q, params, generator)
    if hidden is not None:
        drafter.observe(plan.position, plan.fed[: n_accepted + 1], hidden[0, : n_accepted + 1])
    finished = time.perf_counter()
    return StepResult(
        tokens=[*plan.draft.tokens[:n_accepted], next_token],
        drafted=len(plan.draft.tokens),
        accepted=n_accepted,
        draft_s=plan.drafted_at - plan.started,
        verify_s=finished - plan.drafted_at,
    )


def speculative_step(
    target: Transformer,
    cache: KVCache,
    context: list[int],
    drafter: Drafter | None,
    k: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> StepResult:
    """One draft/verify step from `context` (its last token pending). Returns the new tokens.

    `plan_step` + the verify forward + `finish_step`; llm/batch.py runs the same halves around one
    forward shared by several sessions."""
    plan = plan_step(cache, context, drafter, k, params, generator)
    if needs_hidden(drafter):  # a draft head reads the target's states of kept positions
        logits, hidden = target(torch.tensor(plan.fed), cache, plan.position, return_hidden=True)
    else:
        logits, hidden = target(torch.tensor(plan.fed), cache, plan.position), None  # [k+1, V]
    return finish_step(plan, logits, hidden, drafter, params, generator)


def needs_hidden(drafter: Drafter | None) -> bool:
    return bool(getattr(drafter, "needs_hidden", False))


def prefill_chunk(target: Transformer, piece: list[int], cache: KVCache, start: int, drafter: Drafter | None) -> None:
    """Feed a prefill chunk to the target; a drafter that reads hidden states is shown them."""
    if needs_hidden(drafter):
        _, hidden = target(torch.tensor(piece), cache, start, return_hidden=True)
        drafter.observe(start, piece, hidden)
    else:
        target(torch.tensor(piece), cache, start, last_only=True)


class AdaptiveK:
    """Speculation length per step within [k_min, k_max]: double after a fully accepted draft, shrink to just
    past the accepted prefix after a rejection (so a run of rejections costs short, cheap verifies).

    Where a (k+1)-token verify costs about a 1-token step (bf16 on CPU up to k ~ 8, GPUs), raise k_min so
    the drafter always proposes long drafts; where it grows with k (fp32 on CPU), keep k_min low.
    """

    def __init__(self, k_min: int, k_max: int, start: int | None = None) -> None:
        if not 0 <= k_min <= k_max:
            raise ValueError(f"need 0 <= k_min <= k_max, got {k_min}, {k_max}")
        self.k_min, self.k_max = k_min, k_max
        self.k = min(k_max, max(k_min, start if start is not None else k_min + (k_max - k_min) // 2))

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return  # the drafter had nothing to offer; says nothing about k
        if accepted == drafted:
            self.k = min(self.k_max, self.k * 2 if self.k > 0 else 1)
        else:
            self.k = max(self.k_min, accepted + 1)


def generate_ids(
    target: Transformer,
    prompt: list[int],
    max_new_tokens: int,
    *,
    drafter: Drafter | None = None,
    k: AdaptiveK | None = None,
    params: SamplingParams | None = None,
    generator: torch.Generator | None = None,
    eos_ids: frozenset[int] = frozenset(),
    cache: KVCache | None = None,
) -> tuple[list[int], list[StepResult]]:
    """Token-level generation without a chat session (tests, benchmarks): prefill, then speculative steps."""
    from llm.sampling import GREEDY

    params = params or GREEDY
    k = k or AdaptiveK(0, 0)
    cache = cache or target.new_cache(len(prompt) + max_new_tokens + (k.k_max + 1))
    for start in range(0, len(prompt) - 1, 16):
        prefill_chunk(target, prompt[start : min(start + 16, len(prompt) - 1)], cache, start, drafter)
    if drafter is not None:
        drafter.prefill(prompt[:-1])
    context, out, steps = list(prompt), [], []
    while len(out) < max_new_tokens:
        result = speculative_step(target, cache, context, drafter, k.k, params, generator)
        k.update(result.drafted, result.accepted)
        steps.append(result)
        for token in result.tokens:
            out.append(token)
            if token in eos_ids or len(out) == max_new_tokens:
                return out, steps
        context += result.tokens
    return out, steps


@dataclass
class Engine:
    """What all sessions share: target weights, tokenizer, draft weights, drafter kind, k range."""

    target: Transformer
    tokenizer: object
    drafter_kind: str = "ngram"
    draft_model: Transformer | None = None
    k_min: int = 1
    k_max: int = 16
    draft_head: DraftHead | None = None  # drafter "head": the shipped one is loaded when not given

    def __post_init__(self) -> None:
        if self.drafter_kind not in DRAFTER_KINDS:
            raise ValueError(f"drafter must be one of {DRAFTER_KINDS}, got {self.drafter_kind!r}")
        if self.drafter_kind == "model":
            if self.draft_model is None:
                raise ValueError("drafter 'model' needs a draft_model")
            if self.draft_model.args.vocab_size != self.target.args.vocab_size:
                raise ValueError("the draft model must share the target's vocabulary")
        if self.drafter_kind == "head" and self.draft_head is None:
            from llm.draft_head import load_head

            self.draft_head = load_head(self.target)
        AdaptiveK(self.k_min, self.k_max)  # validates the range

    @property
    def drafter_name(self) -> str:
        return self.drafter_kind

    def new_drafter(self, max_len: int) -> Drafter | None:
        """Per-session drafter state (a draft model's drafter owns a KV cache)."""
        if self.drafter_kind == "ngram":
            return NgramDrafter()
        if self.drafter_kind == "model":
            return ModelDrafter(self.draft_model, max_len)
        if self.drafter_kind == "head":
            from llm.draft_head import HeadDrafter

            return HeadDrafter(self.draft_head, self.target, max_len)
        return None

    def session(self, **kwargs):
        from llm.session import Session

        return Session(self, **kwargs)

    @classmethod
    def load(
        cls,
        model_path: Path | str,
        *,
        draft: str | Path = "ngram",
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        k_min: int = 1,
        k_max: int = 16,
    ) -> Engine:
        """Load the target (HF folder or GGUF) and the drafter: "ngram", "none", "head" (the shipped
        trained draft head, llm/draft_head.py) or a draft model path."""
        from llm.loading import load_model

        target, tokenizer = load_model(model_path, dtype=dtype, device=device)
        draft = str(draft)
        if draft in ("ngram", "none", "head", ""):
            return cls(target, tokenizer, draft or "none", None, k_min, k_max)
        draft_model, draft_tokenizer = load_model(draft, dtype=dtype, device=device)
        if draft_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"draft model {draft} does not share the target's tokenizer")
        return cls(target, tokenizer, "model", draft_model, k_min, k_max)
