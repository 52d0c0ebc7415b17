"""Continuous batching: the reply steps of many sessions in one target forward.

A CPU decode step is memory-bound — every weight is read once per forward whatever the number of rows —
so one forward over the rows of 8 sessions costs far less than 8 forwards. `step_together` runs one step
of each given reply (`llm.generation.Generation`) in ONE `Transformer.forward_batch`: each reply plans its
row (a prefill chunk, or a speculative verify of its pending token + drafts, of any length), the rows are
packed into one forward, and each reply accepts its own tokens from its own logits (ragged accept lengths).
Each session keeps its own KV cache — its slot — so rollback stays per session (its cached length), and
sessions join and leave between any two forwards.

Speculation in a batch: a verify's extra rows are nearly free for one session (a memory-bound step) but
not once the forward is already wide, so with B replies each drafts at most BATCH_PACKED_MAX_ROWS // B − 1
tokens (B = 2: 3, B = 4: 1, more: none; `draft_budget`); alone, the adaptive k decides as before.
Lossless either way.

Fairness: while other replies share the forward, a reply still prefilling contributes at most `chunk`
tokens per forward, so a long prompt delays the others by one chunk's worth of rows per step, never by its
whole prefill. Alone, a reply prefills up to `FINAL_CHUNK` tokens per forward, exactly as `generate()`.

`BatchScheduler` is the single-threaded loop over this (tests, benchmarks); the app's LLM lane
(app/batch_lane.py) calls `step_together` from its worker thread for the steps its callers wait on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from llm.generation import Generation
from llm.model import BATCH_PACKED_MAX_ROWS, BatchRow, Transformer, forward_rows
from llm.session import CHUNK, FINAL_CHUNK, ReplyDelta


@dataclass
class StepOutcome:
    """What one reply got from a batched step: a delta (None: nothing to say yet — a prefill chunk, or
    text not yet safe to emit), whether it has ended, or the error that ended it."""

    delta: ReplyDelta | None = None
    done: bool = False
    error: BaseException | None = None


@dataclass
class ForwardRecord:
    """One batched forward: rows (replies in it), tokens (packed rows), seconds (planning + forward +
    accepting, the time every reply in it waited)."""

    rows: int
    tokens: int
    prefill_rows: int
    seconds: float


def step_together(
    model: Transformer, generations: Sequence[Generation], chunk: int = CHUNK,
    draft_budget: int = BATCH_PACKED_MAX_ROWS,
) -> tuple[list[StepOutcome], ForwardRecord | None]:  # fmt: skip
    """One step of each reply in one forward. Returns an outcome per reply (in order) and the forward's
    record (None when no reply needed a forward: all had ended). With several replies, each drafts at most
    draft_budget // len(generations) - 1 tokens."""
    if not generations:
        return [], None
    started = time.perf_counter()
    alone = len(generations) == 1
    limit = max(chunk, FINAL_CHUNK) if alone else chunk
    max_draft = None if alone else max(0, draft_budget // len(generations) - 1)
    outcomes = [StepOutcome() for _ in generations]
    planned: list[tuple[int, BatchRow]] = []
    for i, generation in enumerate(generations):
        try:
            row = generation.plan(limit, max_draft)
        except Exception as exc:  # one broken reply must not stop the others
            outcomes[i] = StepOutcome(done=True, error=exc)
            continue
        if row is None:
            outcomes[i].done = True
        elif any(row.cache is other.cache for _, other in planned):  # two live replies of one session
            generation.abort()
            outcomes[i] = StepOutcome(done=True, error=RuntimeError("another reply of this session is running"))
        else:
            planned.append((i, row))
    if not planned:
        return outcomes, None
    try:
        results = forward_rows(model, [row for _, row in planned])
    except Exception as exc:
        for i, _ in planned:
            generations[i].abort()
            outcomes[i] = StepOutcome(done=True, error=exc)
        return outcomes, None
    for (i, _), (logits, hidden) in zip(planned, results, strict=True):
        try:
            outcomes[i].delta = generations[i].complete(logits, hidden)
        except Exception as exc:
            outcomes[i] = StepOutcome(done=True, error=exc)
    record = ForwardRecord(
        rows=len(planned),
        tokens=sum(len(row.tokens) for _, row in planned),
        prefill_rows=sum(row.logits == "none" for _, row in planned),
        seconds=time.perf_counter() - started,
    )
    return outcomes, record


@dataclass
class BatchScheduler:
    """Single-threaded continuous batching: `add` replies at any time; each `step()` runs one forward
    over every live reply and drops the ones that ended. `forwards` records every forward."""

    model: Transformer
    chunk: int = CHUNK
    draft_budget: int = BATCH_PACKED_MAX_ROWS
    live: list[Generation] = field(default_factory=list)
    forwards: list[ForwardRecord] = field(default_factory=list)

    def add(self, generation: Generation) -> Generation:
        if generation in self.live:
            raise ValueError("this reply is already scheduled")
        self.live.append(generation)
        return generation

    def step(self) -> dict[Generation, StepOutcome]:
        """One forward over all live replies; returns each one's outcome."""
        generations = list(self.live)
        outcomes, record = step_together(self.model, generations, self.chunk, self.draft_budget)
        if record is not None:
            self.forwards.append(record)
        self.live = [g for g, o in zip(generations, outcomes, strict=True) if not o.done]
        return dict(zip(generations, outcomes, strict=True))

    def run(self) -> None:
        """Step until every live reply has ended."""
        while self.live:
            self.step()
