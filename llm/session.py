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
  `discard_reply` (or the next `extend`, which keeps it whole). It returns a `llm.generation.Generation`:
  an iterator (`next()`, `close()`) whose steps llm/batch.py can also run together with other sessions'.
- `discard_reply()`: drop the reply (open or finished) and reopen the user turn it answered.
- `truncate_reply(spoken_text)`: the last reply becomes exactly what was spoken (may be "").
- `add_turn(user_text, reply_text=None)`: a whole text turn (and optionally the assistant's answer).
- `next_token_logits()`: the target's logits after the conversation so far (tests, scoring).
- `end_of_turn_probability(user_text)`: read-only; P(the user is done) after `user_text` as the open
  user turn (probability mass on sentence-final punctuation and `<|im_end|>`), reusing the KV cache.
- `stats` (cumulative) and `last_reply` (`SessionStats` of the latest `generate`).

Internally the conversation is a token list (ChatML): system + closed turns + the open turn. The target
cache holds a prefix of it (`_cached`); any change rolls back to the longest common token prefix and
prefills only the rest, so the logits always equal a fresh prefill of the same text.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from llm.chat_turns import ChatTurns, SessionError, Turn
from llm.drafters import common_prefix
from llm.engine import AdaptiveK, Engine, prefill_chunk
from llm.generation import Generation
from llm.sampling import GREEDY, SamplingParams

CHUNK = 16
FINAL_CHUNK = 256
_FINAL_PUNCTUATION = ".?!…"


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


class Session(ChatTurns):
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
        super().__init__(system_prompt)  # turns, open turn, lock, version
        self._system = self._headers["system"] + self._encode(system_prompt) + self._footer
        self._closed: list[int] = list(self._system)  # system + closed turns, flattened
        self._cached: list[int] = []  # the tokens whose keys/values fill the target cache, in order
        self.stats = SessionStats()
        self.last_reply = SessionStats()
        self._end_ids: list[int] | None = None

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

    def _turn_tokens(self, turn: Turn, closed: bool) -> list[int]:
        return self._headers[turn.role] + turn.tokens + (self._footer if closed else [])

    def _rebuild_closed(self) -> None:
        self._closed = list(self._system)
        for turn in self._turns:
            self._closed += self._turn_tokens(turn, closed=True)

    # ChatTurns hooks: every text edit re-encodes the turn, and the flattened closed tokens follow the turns.
    def _set_text(self, turn: Turn, text: str) -> None:
        turn.text, turn.tokens = text, self._encode(text)

    def _turn_closed(self, turn: Turn) -> None:
        self._closed += self._turn_tokens(turn, closed=True)

    def _turns_changed(self) -> None:
        self._rebuild_closed()

    def _user_text_changed(self) -> None:
        self._sync(whole_chunks_only=True)  # prefill whole chunks while the user speaks

    def first_turn_tokens(self, user_text: str) -> tuple[list[int], list[int]]:
        """(system prompt + user header, the user's words + turn end + assistant header): the conversation
        as it would stand with `user_text` as its first turn, for history-free probes (a tool-call decision
        calibrated on first turns, llm/tool_format.py `call_probability`)."""
        return self._system + self._headers["user"], (
            self._encode(user_text) + self._footer + self._headers["assistant"]
        )

    def tokens(self) -> list[int]:
        """The whole conversation as the model sees it (ChatML)."""
        return self._closed + (self._turn_tokens(self._open, closed=False) if self._open else [])

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
            prefill_chunk(self.model, piece, self.cache, start, self.drafter)
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
            logits = self.model(torch.tensor(sequence[-1:]), self.cache, len(sequence) - 1)[-1]
            self._cached.append(sequence[-1])  # its keys/values are in the cache now: reused by the next call
            return logits

    def end_of_turn_probability(self, user_text: str) -> float:
        """P(the user's turn is over) right after `user_text`: the next-token probability mass on
        sentence-final punctuation ("?", ".", "!", ...) and the end-of-turn token, with the conversation
        as context. Trailing punctuation (Whisper adds some at every pause) is stripped first.

        Read-only: the history and the cached prefix do not change. The probe forwards only the tokens past
        the longest common prefix with what the KV cache holds (incremental prefill has most of the user's
        words there); positions past the cached prefix are free scratch space, and cached positions the
        probe had to overwrite (it differs inside them) are forwarded again.
        """
        words = user_text.strip().rstrip(_FINAL_PUNCTUATION + ",;: ").strip()
        if not words:
            return 0.0
        with self._lock:
            if self._open is not None and self._open.role == "assistant":
                base = self._closed + self._turn_tokens(self._open, closed=True)
            else:
                base = self._closed
            probe = base + self._headers["user"] + self._encode(words)
            if len(probe) >= self.max_context:
                raise SessionError(f"the conversation ({len(probe)} tokens) does not fit max_context")
            kept = len(self._cached)
            common = min(common_prefix(self._cached, probe), len(probe) - 1)
            logits = None
            for start in range(common, len(probe), FINAL_CHUNK):
                piece = probe[start : start + FINAL_CHUNK]
                logits = self.model(torch.tensor(piece), self.cache, start, last_only=True)[-1]
            if common < kept:  # the probe overwrote cached positions: put their keys/values back
                for start in range(common, kept, FINAL_CHUNK):
                    piece = self._cached[start : min(kept, start + FINAL_CHUNK)]
                    self.model(torch.tensor(piece), self.cache, start, last_only=True)
            probs = torch.softmax(logits.float(), dim=-1)
            return float(probs[self._turn_end_ids()].sum())

    def _turn_end_ids(self) -> list[int]:
        """Token ids that end a spoken turn: sentence-final punctuation pieces and the end-of-turn token."""
        if self._end_ids is None:
            self._end_ids = sorted(set(_final_punctuation_ids(self.tokenizer)) | self.eos_ids)
        return self._end_ids

    # -- user turn (extend / revise / add_turn: ChatTurns) -------------------------------------------------
    def end_user_turn(self) -> None:
        """Close the user turn, open the assistant's and prefill all but the last token."""
        with self._lock:
            super().end_user_turn()
            self._sync(whole_chunks_only=False)

    # -- reply (discard_reply / truncate_reply: ChatTurns) ------------------------------------------------
    def append_reply(self, token_ids: list[int]) -> None:
        """Add tokens to the open reply (opened, closing the user turn, if needed): forced text and
        constrained decoding (llm/tool_format.py) step with this and `next_token_logits()`."""
        with self._lock:
            self._reply_turn()
            self._open.tokens += list(token_ids)
            self._open.text = self.tokenizer.decode(self._open.tokens)
            self._version += 1

    def close_reply(self) -> None:
        """Close the reply that `append_reply` built (it joins the history as written, tokens and all)."""
        with self._lock:
            if self._open is None or self._open.role != "assistant":
                raise SessionError("there is no open reply to close")
            self._close_open()

    def generate(
        self,
        max_tokens: int = 64,
        sampling: SamplingParams = GREEDY,
        cancel: threading.Event | None = None,
        stop: tuple[str, ...] = (),
    ) -> Generation:
        """Reply token by token (speculatively when the engine has a drafter). See the module docstring.

        Returns a `Generation`: an iterator of deltas (nothing runs before the first `next()`; `close()`
        ends it) whose steps llm/batch.py can also run in forwards shared with other sessions."""
        return Generation(self, max_tokens, sampling, cancel, stop)


@functools.lru_cache(maxsize=4)
def _final_punctuation_ids(tokenizer: Any) -> tuple[int, ...]:
    """Vocabulary entries made only of sentence-final punctuation ("?", ".", " ?", "...", "?!"); once per
    tokenizer (a scan of the whole vocabulary)."""
    found = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id]).strip()
        if text and all(c in _FINAL_PUNCTUATION for c in text):
            found.append(token_id)
    return tuple(found)


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
