"""A chat kept in the KV cache between turns, prefilled while the user speaks, replied to speculatively.

Usage::

    from llm.engine import Engine
    from llm.sampling import SamplingParams
    from llm.session import Session

    engine = Engine.load(model_path, draft="ngram")          # shared weights: load once per process
    session = Session(engine, system_prompt="Be brief.", max_context=2048)   # owns its KV caches

    session.extend("what is the")          # transcript grows: prefilled in 16-token chunks meanwhile
    session.revise("what's the weather")   # transcript changed: roll back to the common token prefix
    session.end_user_turn()                # closes the turn (<|im_end|>\\n<|im_start|>assistant\\n)
    for delta in session.generate(max_tokens=64, sampling=SamplingParams(0.7, top_p=0.9), cancel=event):
        speak(delta.text)                  # text deltas, correct across token boundaries
    session.truncate_reply("It is sunny")  # barge-in: history keeps only what was actually spoken

    async for delta in session.agenerate(max_tokens=64, cancel=event): ...  # steps run in a thread

API (stable; used by app/conversation.py and app/turn.py):
- `extend(text)`: append transcript text to the open user turn (opens one if needed; a space is inserted
  between words unless the new text starts with whitespace or punctuation).
- `revise(full_user_text)`: replace the open user turn's text.
- `end_user_turn()`: close the user turn and open the assistant's; prefills everything but the last token.
- `generate(max_tokens, sampling, cancel, stop)`: yields `ReplyDelta(text, token_ids)`; stops on EOS, a
  stop string, max tokens, a full context, or `cancel` (checked before every step, so it returns within
  one step). `finish_reason` says which. A cancelled reply stays open until `truncate_reply` /
  `discard_reply` (or the next `extend`, which keeps it whole).
- `discard_reply()`: drop the reply (open or finished) and reopen the user turn it answered.
- `truncate_reply(spoken_text)`: the last reply becomes exactly what was spoken (may be "").
- `add_turn(user_text, reply_text=None)`: a whole text turn (and optionally the assistant's answer).
- `next_token_logits()`: the target's logits after the conversation so far (tests, scoring).
- `stats` (cumulative) and `last_reply` (`SessionStats` of the latest `generate`).

Internally the conversation is a token list (ChatML): system + closed turns + the open turn. The target
cache holds a prefix of it (`_cached`); any change rolls back to the longest common token prefix and
prefills only the rest, so the logits always equal a fresh prefill of the same text.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import torch

from llm.drafters import common_prefix
from llm.engine import AdaptiveK, Engine, speculative_step
from llm.sampling import GREEDY, SamplingParams

CHUNK = 16
FINAL_CHUNK = 256
_NO_SPACE_BEFORE = tuple(".,!?;:)]}'\"%…")


class SessionError(RuntimeError):
    """A call that does not fit the session's state (e.g. closing an empty user turn)."""


@dataclass
class ReplyDelta:
    text: str
    token_ids: list[int]


@dataclass
class SessionStats:
    prefill_tokens: int = 0
    prefill_forwards: int = 0
    prefill_s: float = 0.0
    steps: int = 0  # target forwards while generating (one per speculative step)
    generated: int = 0  # tokens the steps produced (bonus/correction included; EOS/max tokens may cut some)
    drafted: int = 0
    accepted: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    generate_s: float = 0.0
    first_token_s: float | None = None
    step_sizes: list[int] = field(default_factory=list)  # tokens emitted per step

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens per target forward while generating, the bonus/correction token included."""
        return self.generated / self.steps if self.steps else 0.0

    def add(self, other: SessionStats) -> None:
        for name in ("prefill_tokens", "prefill_forwards", "prefill_s", "steps", "generated", "drafted",
                     "accepted", "draft_s", "verify_s", "generate_s"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _Turn:
    role: str
    tokens: list[int]
    text: str


class Session:
    def __init__(
        self,
        engine: Engine | tuple,
        *,
        system_prompt: str = "",
        max_context: int = 2048,
        chunk: int = CHUNK,
        seed: int | None = None,
    ) -> None:
        if isinstance(engine, tuple):  # (model, tokenizer): plain decoding, no drafter
            engine = Engine(engine[0], engine[1], drafter_kind="none")
        self.engine, self.model, self.tokenizer = engine, engine.target, engine.tokenizer
        # The cache never exceeds what the model's positions allow.
        self.max_context, self.chunk = min(max_context, self.model.args.max_positions), chunk
        self.cache = self.model.new_cache(max_context)
        self.drafter = engine.new_drafter(max_context)
        self.k = AdaptiveK(engine.k_min, engine.k_max)
        self.generator = torch.Generator(device="cpu")
        if seed is None:
            self.generator.seed()  # non-deterministic, without touching torch's global generator
        else:
            self.generator.manual_seed(seed)
        if self.tokenizer.convert_tokens_to_ids("<|im_start|>") in (None, self.tokenizer.unk_token_id):
            raise SessionError(
                "the tokenizer has no ChatML tokens (<|im_start|>); only ChatML models are supported"
            )
        self._footer = self._special("<|im_end|>\n")
        self._headers = {
            role: self._special(f"<|im_start|>{role}\n") for role in ("system", "user", "assistant")
        }
        self.eos_ids = {self._special("<|im_end|>")[0]}
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        self.system_prompt = system_prompt
        self._system = self._headers["system"] + self._encode(system_prompt) + self._footer
        self._turns: list[_Turn] = []
        self._closed: list[int] = list(self._system)  # system + closed turns, flattened
        self._open: _Turn | None = None  # the open user turn or assistant reply
        self._cached: list[int] = []  # the tokens whose keys/values fill the target cache, in order
        self._lock = threading.RLock()
        self._version = 0  # bumped by every history change; a running generate stops when it moves
        self.finish_reason: str | None = None
        self.stats = SessionStats()
        self.last_reply = SessionStats()

    # -- tokens -------------------------------------------------------------------------------------
    def _special(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode(self, text: str) -> list[int]:
        """Content text: special-token strings in it stay plain text (a user cannot inject a turn end)."""
        text = text.strip()
        return (
            self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            if text
            else []
        )

    def _turn_tokens(self, turn: _Turn, closed: bool) -> list[int]:
        return self._headers[turn.role] + turn.tokens + (self._footer if closed else [])

    def _rebuild_closed(self) -> None:
        self._closed = list(self._system)
        for turn in self._turns:
            self._closed += self._turn_tokens(turn, closed=True)

    def tokens(self) -> list[int]:
        """The whole conversation as the model sees it (ChatML)."""
        return self._closed + (self._turn_tokens(self._open, closed=False) if self._open else [])

    @property
    def history(self) -> list[dict[str, str]]:
        """Messages (closed turns and the open one) in the chat-template format."""
        turns = self._turns + ([self._open] if self._open else [])
        return [{"role": "system", "content": self.system_prompt}] + [
            {"role": t.role, "content": t.text} for t in turns
        ]

    # -- cache --------------------------------------------------------------------------------------
    def _sync(self, whole_chunks_only: bool) -> None:
        """Make the caches hold all but the last token of the conversation (the last stays pending).

        While the user speaks (`whole_chunks_only`) only complete 16-token chunks are prefilled: the tail
        is likely to change as words grow. Rollback is free: positions past the common prefix are simply
        overwritten by the next forward.
        """
        sequence = self.tokens()
        self._fit(sequence)
        sequence = self.tokens()
        goal = len(sequence) - 1
        common = min(common_prefix(self._cached, sequence), goal)
        del self._cached[common:]
        if whole_chunks_only:
            goal = common + (goal - common) // self.chunk * self.chunk
        if goal <= common:
            return
        started = time.perf_counter()
        # Streaming: 16-token chunks. Final: the whole remainder at once (at most FINAL_CHUNK per forward),
        # since the text is complete and one larger forward beats several small ones.
        step = self.chunk if whole_chunks_only else max(self.chunk, FINAL_CHUNK)
        for start in range(common, goal, step):
            piece = sequence[start : min(goal, start + step)]
            self.model(torch.tensor(piece), self.cache, start, last_only=True)
            self._cached += piece
            self.stats.prefill_forwards += 1
        if self.drafter is not None:
            self.drafter.prefill(sequence[:goal])
        self.stats.prefill_tokens += goal - common
        self.stats.prefill_s += time.perf_counter() - started

    def _fit(self, sequence: list[int], reserve: int = 0) -> None:
        """Drop the oldest turns while the conversation (+ reserve) would overflow the cache."""
        dropped = False
        while len(sequence) + reserve >= self.max_context and self._turns:
            self._turns.pop(0)
            self._rebuild_closed()
            sequence, dropped = self.tokens(), True
        if dropped:
            self._version += 1
        if len(sequence) >= self.max_context:
            raise SessionError(
                f"the conversation ({len(sequence)} tokens) does not fit max_context={self.max_context}"
            )

    def next_token_logits(self) -> torch.Tensor:
        """fp32 logits [V] for the token after the conversation so far."""
        with self._lock:
            self._sync(whole_chunks_only=False)
            sequence = self.tokens()
            return self.model(torch.tensor(sequence[-1:]), self.cache, len(sequence) - 1)[-1]

    # -- user turn ----------------------------------------------------------------------------------
    def _user_turn(self) -> _Turn:
        """The open user turn, opening one (and closing a reply left open) if needed."""
        if self._open is not None and self._open.role == "user":
            return self._open
        if self._open is not None:  # a reply left open (cancelled, never truncated): keep it whole
            self._close_open()
        self._open = _Turn("user", [], "")
        return self._open

    def extend(self, text: str) -> None:
        """Append transcript text to the user turn and prefill whole chunks of it."""
        with self._lock:
            turn = self._user_turn()
            if turn.text and text and not text[0].isspace() and not turn.text[-1].isspace():
                if not text.startswith(_NO_SPACE_BEFORE):
                    text = " " + text
            self._set_user_text(turn, turn.text + text)

    def revise(self, full_user_text: str) -> None:
        """Replace the user turn's text; the caches roll back to the longest common token prefix."""
        with self._lock:
            self._set_user_text(self._user_turn(), full_user_text)

    def _set_user_text(self, turn: _Turn, text: str) -> None:
        turn.text, turn.tokens = text, self._encode(text)
        self._version += 1
        self._sync(whole_chunks_only=True)

    def end_user_turn(self) -> None:
        """Close the user turn, open the assistant's and prefill all but the last token."""
        with self._lock:
            if self._open is None or self._open.role != "user" or not self._open.tokens:
                raise SessionError("no user text to close: call extend()/revise() first")
            self._close_open()
            self._open = _Turn("assistant", [], "")
            self._sync(whole_chunks_only=False)

    def add_turn(self, user_text: str, reply_text: str | None = None) -> None:
        """A whole text turn; with `reply_text`, the assistant's answer is added to history as well."""
        with self._lock:
            turn = self._user_turn()  # no streaming prefill: the text is complete, end_user_turn does it once
            turn.text, turn.tokens = user_text, self._encode(user_text)
            self._version += 1
            self.end_user_turn()
            if reply_text is not None:
                self._open.text, self._open.tokens = reply_text, self._encode(reply_text)
                self._close_open()

    def _close_open(self) -> None:
        if self._open is not None:
            self._turns.append(self._open)
            self._closed += self._turn_tokens(self._open, closed=True)
            self._open = None
            self._version += 1

    # -- reply --------------------------------------------------------------------------------------
    def _last_assistant(self) -> _Turn | None:
        if self._open is not None and self._open.role == "assistant":
            return self._open
        return next((t for t in reversed(self._turns) if t.role == "assistant"), None)

    def discard_reply(self) -> None:
        """Forget the latest reply (open or finished) and reopen the user turn it answered."""
        with self._lock:
            self._version += 1
            if self._open is not None and self._open.role == "assistant":
                self._open = None
            elif self._turns and self._turns[-1].role == "assistant" and self._open is None:
                self._turns.pop()
            else:
                raise SessionError("there is no reply to discard")
            if self._turns and self._turns[-1].role == "user":
                self._open = self._turns.pop()
            self._rebuild_closed()
            self.finish_reason = None

    def truncate_reply(self, spoken_text: str) -> None:
        """After a barge-in: the latest reply keeps only the text that was actually spoken."""
        with self._lock:
            turn = self._last_assistant()
            if turn is None:
                raise SessionError("there is no reply to truncate")
            turn.text, turn.tokens = spoken_text, self._encode(spoken_text)
            self._version += 1
            if turn is self._open:
                self._close_open()
            else:
                self._rebuild_closed()

    def generate(
        self,
        max_tokens: int = 64,
        sampling: SamplingParams = GREEDY,
        cancel: threading.Event | None = None,
        stop: tuple[str, ...] = (),
    ) -> Iterator[ReplyDelta]:
        """Reply token by token (speculatively when the engine has a drafter). See the module docstring."""
        with self._lock:
            if self._open is not None and self._open.role == "user":
                self.end_user_turn()
            elif self._open is None:  # a new assistant turn after a closed one
                self._open = _Turn("assistant", [], "")
            reply = self._open
            self._fit(self.tokens(), reserve=min(max_tokens, self.max_context // 2))
            self._sync(whole_chunks_only=False)
            version = self._version
        stats = SessionStats()
        self.last_reply, self.finish_reason = stats, None
        started = time.perf_counter()
        emitted = len(self.tokenizer.decode(reply.tokens)) if reply.tokens else 0
        produced = 0
        reason = None
        try:
            while reason is None:
                if cancel is not None and cancel.is_set():
                    reason = "cancelled"
                    break
                with self._lock:
                    if self._version != version or self._open is not reply:
                        reason = "cancelled"  # history changed under us (discard/truncate/extend)
                        break
                    context = self.tokens()
                    room = self.max_context - len(context)
                    if room <= 0:
                        reason = "context"
                        break
                    result = speculative_step(self.model, self.cache, context, self.drafter, min(self.k.k, room - 1),
                                              sampling, self.generator)  # fmt: skip
                    self._cached = context + result.tokens[:-1]  # pending + accepted drafts were fed
                    self.k.update(result.drafted, result.accepted)
                    new = result.tokens
                    for i, token in enumerate(new):
                        if token in self.eos_ids:
                            new, reason = new[:i], "eos"
                            break
                    if produced + len(new) >= max_tokens:
                        new, reason = new[: max_tokens - produced], reason or "length"
                    produced += len(new)
                    reply.tokens += new
                    stats.steps += 1
                    stats.generated += len(result.tokens)
                    stats.drafted += result.drafted
                    stats.accepted += result.accepted
                    stats.draft_s += result.draft_s
                    stats.verify_s += result.verify_s
                    stats.step_sizes.append(len(result.tokens))
                    if stats.first_token_s is None:
                        stats.first_token_s = time.perf_counter() - started
                    text = self.tokenizer.decode(reply.tokens)
                    cut = _find_stop(text, stop)
                    if cut is not None:
                        text, reason = text[:cut], "stop"
                        reply.tokens = self._encode(text)
                    safe = len(text) if reason else _stable_length(text, stop)
                    delta = text[emitted:safe]
                    emitted = max(emitted, safe)
                    reply.text = text
                if delta or new:
                    yield ReplyDelta(delta, new)
        finally:  # also when the caller stops iterating early: that counts as a cancellation
            reason = reason or "cancelled"
            stats.generate_s = time.perf_counter() - started
            self.stats.add(stats)
            self.finish_reason = reason
            with self._lock:
                if reason != "cancelled" and self._open is reply:
                    self._close_open()

    async def agenerate(
        self,
        max_tokens: int = 64,
        sampling: SamplingParams = GREEDY,
        cancel: threading.Event | None = None,
        stop: tuple[str, ...] = (),
    ) -> AsyncIterator[ReplyDelta]:
        """`generate` with every step in a worker thread; cancelling the task stops within one step."""
        cancel = cancel or threading.Event()
        steps = self.generate(max_tokens, sampling, cancel, stop)
        done = object()
        try:
            while (delta := await asyncio.to_thread(next, steps, done)) is not done:
                yield delta
        finally:
            cancel.set()
            await asyncio.to_thread(steps.close)


def _find_stop(text: str, stop: tuple[str, ...]) -> int | None:
    cuts = [i for s in stop if s and (i := text.find(s)) >= 0]
    return min(cuts) if cuts else None


def _stable_length(text: str, stop: tuple[str, ...]) -> int:
    """How much of `text` can be emitted: not a half-decoded character, not a possible stop-string start."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for s in stop:
        for n in range(min(len(s) - 1, end), 0, -1):
            if text[end - n : end] == s[:n]:
                end -= n
                break
    return end
