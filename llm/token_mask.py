"""The token mask: which tokens of a tokenizer's vocabulary keep a constrained value valid.

The grammar and its character automaton live in llm/constrained.py and know nothing of tokens; this module
is the tokenizer-facing half. It imports the automaton, never the other way round.

* `Vocabulary`: the decoded string of every token (once per tokenizer) and a trie of them. Tokens that decode
  to an incomplete UTF-8 sequence or to a special token are never allowed.
* `ConstrainedDecoder`: turns an automaton state into a boolean mask over the vocabulary; a token is allowed
  when every character of it keeps the automaton alive.
* `choose_masked`: the sampler's choice over the allowed tokens only; `decode` runs the loop.

Because every state keeps at least one single-character token alive (`compile_schema` only uses characters
`Vocabulary.writable` accepts), `decode` always reaches a complete value, and its text is valid JSON accepted
by the schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from llm.constrained import (
    Arr,
    Lit,
    LitF,
    Node,
    Num,
    Obj,
    State,
    Str,
    StrF,
    ValueF,
    feed,
    feed_text,
    initial_state,
)
from llm.sampling import GREEDY, SamplingParams, choose


class Vocabulary:
    """Every token's decoded text (once per tokenizer), a trie over them and the arrays the fast paths use."""

    _cache: dict[int, tuple[Any, Vocabulary]] = {}

    def __init__(self, tokenizer: Any) -> None:
        size = len(tokenizer)
        special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
        self.size = size
        self.strings: list[str | None] = []
        for i, text in enumerate(
            tokenizer.batch_decode(
                [[i] for i in range(size)], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        ):
            usable = i not in special and text and "\ufffd" not in text
            self.strings.append(text if usable else None)
        self.char_len = np.array([len(s) if s else 0 for s in self.strings], dtype=np.int32)
        self.safe_in_string = np.array(
            [bool(s) and not any(c in '"\\' or c < " " for c in s) for s in self.strings], dtype=bool
        )
        self.quote_tokens = [i for i, s in enumerate(self.strings) if s and '"' in s]
        self._single_chars = {s for s in self.strings if s and len(s) == 1}
        self.trie: dict[str, Any] = {}
        for i, s in enumerate(self.strings):
            if s:
                node = self.trie
                for c in s:
                    node = node.setdefault(c, {})
                node.setdefault("", []).append(i)

    @classmethod
    def of(cls, tokenizer: Any) -> Vocabulary:
        """The tokenizer's vocabulary, built once per tokenizer object (~1 s for 49k tokens)."""
        hit = cls._cache.get(id(tokenizer))
        if hit is None or hit[0] is not tokenizer:
            hit = cls._cache[id(tokenizer)] = (tokenizer, cls(tokenizer))
        return hit[1]

    def writable(self, c: str) -> bool:
        """Can the model write character c as a token of its own? (see `compile_schema`)"""
        return c in self._single_chars

    def text(self, token_ids: Iterable[int]) -> str:
        return "".join(self.strings[t] or "" for t in token_ids)


class ConstrainedDecoder:
    """Walks one value of a grammar token by token: `mask()`, then `advance(token)` with an allowed token."""

    def __init__(self, node: Node, vocab: Vocabulary) -> None:
        self.vocab, self.state, self.text = vocab, initial_state(node), ""
        self._masks: dict[State, np.ndarray] = {}

    @property
    def done(self) -> bool:
        return self.state == ()

    def mask(self) -> np.ndarray:
        """Boolean [V]: the tokens that keep the text a prefix of a valid value."""
        if self.done:
            raise RuntimeError("the value is complete; nothing more may be written")
        cached = self._masks.get(self.state)
        if cached is not None:
            return cached
        vocab, state = self.vocab, self.state
        top = state[-1]
        if isinstance(top, StrF):  # inside a free string: nearly every token; vectorised
            mask = vocab.safe_in_string & (vocab.char_len <= top.max_len - top.n)
            for token in vocab.quote_tokens:
                if feed_text(state, vocab.strings[token]) is not None:
                    mask[token] = True
        else:
            mask = np.zeros(vocab.size, dtype=bool)
            _walk(vocab.trie, state, mask)
        if len(self._masks) > 4096:
            self._masks.clear()
        self._masks[state] = mask
        return mask

    def advance(self, token: int) -> None:
        text = self.vocab.strings[token]
        new = feed_text(self.state, text) if text else None
        if new is None:
            raise ValueError(f"token {token} ({text!r}) is not allowed here")
        self.state, self.text = new, self.text + text


_NUMBER_START = frozenset("-0123456789")


def _next_chars(state: State) -> Iterable[str] | None:
    """The characters that can follow, when the top frame alone decides them (None: ask the automaton)."""
    if not state:
        return ()
    top = state[-1]
    if isinstance(top, LitF):
        pos = top.pos
        if all(len(ch) > pos for ch in top.choices):
            return {ch[pos] for ch in top.choices}
        return None
    if isinstance(top, ValueF):
        node = top.node
        if isinstance(node, Lit):
            return {ch[0] for ch in node.choices if ch}
        first = {Str: '"', Obj: "{", Arr: "["}.get(type(node))
        if first is not None:
            return first
        if isinstance(node, Num):
            return _NUMBER_START
    return None


def _walk(node: dict[str, Any], state: State, mask: np.ndarray) -> None:
    chars = _next_chars(state)
    items = node.items() if chars is None else ((c, node[c]) for c in chars if c in node)
    for c, child in items:
        if not c:
            continue
        after = feed(state, c)
        if after is not None:
            _descend(child, after, mask)


def _walk_string(node: dict[str, Any], state: State, mask: np.ndarray) -> None:
    """Inside a free string only the length changes until a quote: skip the automaton for plain chars."""
    top = state[-1]
    for c, child in node.items():
        if not c:
            continue
        if c == '"' or c == "\\" or c < " ":
            after = feed(state, c)
        elif top.n < top.max_len:
            after = state[:-1] + (StrF(top.min_len, top.max_len, top.n + 1),)
        else:
            after = None
        if after is not None:
            _descend(child, after, mask)


def _descend(child: dict[str, Any], after: State, mask: np.ndarray) -> None:
    """Allow the tokens that end at `child`, then walk on below it (the string walker inside a string)."""
    ids = child.get("")
    if ids:
        mask[ids] = True
    if len(child) > (1 if ids else 0):
        if after and isinstance(after[-1], StrF):
            _walk_string(child, after, mask)
        else:
            _walk(child, after, mask)


def choose_masked(
    logits: torch.Tensor,
    mask: np.ndarray,
    params: SamplingParams = GREEDY,
    generator: torch.Generator | None = None,
) -> int:
    """The sampler's usual choice (llm/sampling.py), over the allowed tokens only.

    The masking is done in numpy: one small op on 49k values, where torch's thread pool costs more than
    the work on a busy 2-core box."""
    values = logits.detach().float().cpu().numpy()
    allowed = np.zeros(values.shape[-1], dtype=bool)  # the model's logits may be padded past the tokenizer
    n = min(allowed.shape[0], mask.shape[0])
    allowed[:n] = mask[:n]
    masked = np.where(allowed, values, -np.inf).astype(np.float32)
    if params.greedy:
        return int(masked.argmax())
    return choose(torch.from_numpy(masked), params, generator)


def decode(
    node: Node,
    vocab: Vocabulary,
    next_logits: Callable[[list[int]], torch.Tensor],
    params: SamplingParams = GREEDY,
    generator: torch.Generator | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[str, list[int]]:
    """Write one value of `node`: `next_logits(tokens so far)` gives the logits for the next token.

    Returns (text, token ids). Raises `Cancelled` if `cancel()` turns true between tokens."""
    decoder = ConstrainedDecoder(node, vocab)
    tokens: list[int] = []
    while not decoder.done:
        if cancel is not None and cancel():
            raise Cancelled("constrained decoding was cancelled")
        token = choose_masked(next_logits(tokens), decoder.mask(), params, generator)
        decoder.advance(token)
        tokens.append(token)
    return decoder.text, tokens


class Cancelled(RuntimeError):
    """Decoding stopped before the value was complete."""
