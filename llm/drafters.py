"""Drafters: cheap guesses of the next k tokens, checked by the target in one forward pass.

One small interface (`Drafter`): `propose(context, k, params, generator) -> Draft` and `prefill(context)`.
`context` is the whole conversation as token ids, ending with the newest token (not yet in the target's
cache). A draft carries its tokens and, for a sampling drafter, the distributions q they were drawn from;
`q is None` means a point mass (the acceptance rule in llm/sampling.py handles both losslessly).

- `NgramDrafter` (prompt lookup): finds the latest earlier occurrence of the context's last n tokens and
  proposes what followed it. Free to compute; good when replies echo the question or earlier turns.
- `ModelDrafter`: any causal LM with the target's tokenizer, with its own per-session KV cache that is
  rolled back to the longest common prefix with the context before every proposal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from llm.model import Transformer
from llm.sampling import SamplingParams, probabilities, sample


@dataclass
class Draft:
    tokens: list[int]
    q: Tensor | None = None  # [len(tokens), V] draft probabilities; None = point mass


class Drafter(Protocol):
    name: str

    def propose(
        self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None
    ) -> Draft: ...

    def prefill(self, context: list[int]) -> None:
        """Bring any per-session state up to `context` ahead of time (e.g. while the user speaks)."""
        ...


class NgramDrafter:
    """Prompt lookup: match the last `n` tokens (n from max_ngram down to min_ngram) earlier in the context."""

    name = "ngram"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(
        self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None = None
    ) -> Draft:
        return Draft(self.lookup(context, k))

    def prefill(self, context: list[int]) -> None:
        pass  # stateless

    def lookup(self, context: list[int], k: int) -> list[int]:
        if k <= 0 or len(context) < 2:
            return []
        ids = torch.tensor(context)
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            suffix = ids[-n:]
            # windows[i] = ids[i : i+n]; exclude the suffix itself (the last window).
            windows = ids[:-1].unfold(0, n, 1)
            hits = (windows == suffix).all(-1).nonzero().flatten()
            if hits.numel():
                start = int(hits[-1]) + n  # latest occurrence: the most recent context is the best guide
                return context[start : start + k]
        return []


class ModelDrafter:
    """A small causal LM proposing tokens autoregressively from its own (per-session) KV cache."""

    name = "model"

    def __init__(self, model: Transformer, max_len: int) -> None:
        self.model = model
        self.cache = model.new_cache(max_len)
        self.cached: list[int] = []  # tokens whose keys/values sit in self.cache, in order

    def _feed(self, context: list[int], chunk: int = 16, need_logits: bool = True) -> Tensor | None:
        """Roll back to the common prefix with `context` and feed the rest; returns the last row's logits."""
        common = common_prefix(self.cached, context)
        if need_logits and common == len(context):  # nothing new: re-feed the last token for its logits
            common -= 1
        del self.cached[common:]
        logits = None
        for start in range(common, len(context), chunk):
            piece = context[start : start + chunk]
            logits = self.model(torch.tensor(piece), self.cache, start, last_only=True)[-1]
            self.cached.extend(piece)
        return logits

    def prefill(self, context: list[int]) -> None:
        self._feed(context, need_logits=False)

    def propose(
        self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None = None
    ) -> Draft:
        k = min(k, self.cache.max_len - len(context))
        if k <= 0:
            return Draft([])
        logits = self._feed(context)
        tokens: list[int] = []
        rows: list[Tensor] = []
        for i in range(k):
            if params.greedy:
                token = int(logits.argmax())
            else:
                q = probabilities(logits, params)
                token = sample(q, generator)
                rows.append(q)
            tokens.append(token)
            if i + 1 < k:  # the last draft token is fed next step (if accepted), not now
                position = len(self.cached)
                logits = self.model(torch.tensor([token]), self.cache, position)[-1]
                self.cached.append(token)
        return Draft(tokens, None if params.greedy else torch.stack(rows))


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists (how far a cache can be kept)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
