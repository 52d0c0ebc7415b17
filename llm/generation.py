"""One reply being generated: `Session.generate` returns it; it is an iterator of `ReplyDelta`s and also a
stepper whose forwards can be shared with other sessions' replies (llm/batch.py).

Each step has two halves around one target forward: `plan()` says what the forward must compute for this
reply (a prefill chunk of the conversation the cache still lacks, or a speculative verify of the pending
token + drafts) as a `BatchRow`; `complete(logits, hidden)` takes that row's outputs, accepts tokens and
returns the next delta (or None: a prefill chunk, or a step whose text is not yet safe to emit). Iterating
(`next()`) runs both halves around a forward of this row alone — the single-session path; a scheduler runs
the rows of many replies in one `Transformer.forward_batch`. Both give the same tokens: each row attends over
its own cache only.

No work happens at construction (`generate()` may be called on an event loop; the first `next()` or `plan()`
runs on the compute thread). The session's lock is held from `plan()` to `complete()` / `abort()`, so both
must run on the same thread.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm.drafters import common_prefix
from llm.engine import StepPlan, finish_step, needs_hidden, plan_step
from llm.model import BatchRow, forward_rows
from llm.sampling import SamplingParams

if TYPE_CHECKING:
    from llm.session import ReplyDelta, Session, SessionStats


class Phase(enum.Enum):
    NEW = "new"  # nothing done yet
    RUNNING = "running"  # the reply is open in the session; steps go on
    FINISHED = "finished"  # finish_reason set, stats added, the reply closed unless cancelled


@dataclass
class _Pending:
    """What a planned step needs at `complete()`."""

    row: BatchRow
    plan: StepPlan | None  # None: a prefill chunk
    context: list[int]
    planned_at: float


class Generation(Iterator["ReplyDelta"]):
    """See the module docstring. `finish_reason` and stats land on the session, as documented there."""

    def __init__(self, session: Session, max_tokens: int, sampling: SamplingParams,
                 cancel: threading.Event | None, stop: tuple[str, ...]) -> None:  # fmt: skip
        self.session, self.max_tokens, self.sampling = session, max_tokens, sampling
        self.cancel, self.stop = cancel, stop
        self.phase = Phase.NEW
        self._reason: str | None = None  # why it ends; applied at the next plan()/close() (as a generator would)
        self._pending: _Pending | None = None
        self._stats: SessionStats | None = None
        self._started = 0.0
        self._emitted = 0
        self._produced = 0

    # -- the single-session path ----------------------------------------------------------------------
    def __next__(self) -> ReplyDelta:
        from llm.session import FINAL_CHUNK

        while True:
            row = self.plan(max(self.session.chunk, FINAL_CHUNK))
            if row is None:
                raise StopIteration
            try:
                logits, hidden = forward_rows(self.session.model, [row])[0]
            except BaseException:
                self.abort()
                raise
            delta = self.complete(logits, hidden)
            if delta is not None:
                return delta

    def close(self) -> None:
        """Stop: a reply not finished by itself counts as cancelled (it stays open for discard/truncate)."""
        session = self.session
        with session._lock:
            if self.phase is Phase.NEW:
                self.phase = Phase.FINISHED
            elif self.phase is Phase.RUNNING:
                if self._pending is not None:
                    self.abort()
                else:
                    self._finish(self._reason or "cancelled")

    def __del__(self) -> None:  # like a generator's finally when the caller drops it mid-reply
        try:
            if self.phase is Phase.RUNNING and self._pending is None:
                self.close()
        except Exception:
            pass

    # -- the batched path -------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    def plan(self, prefill_limit: int, max_draft: int | None = None) -> BatchRow | None:
        """The row this reply needs from the next forward (a prefill chunk of at most `prefill_limit`
        tokens, or a verify of at most `max_draft` drafts; None: the adaptive k alone decides), or None
        when it has ended. Holds the session's lock until `complete`/`abort`."""
        if self._pending is not None:
            raise RuntimeError("plan() twice without complete()")
        session = self.session
        session._lock.acquire()
        try:
            row = self._plan(prefill_limit, max_draft)
        except BaseException:
            session._lock.release()
            raise
        if row is None:
            session._lock.release()
        return row

    def complete(self, logits, hidden) -> ReplyDelta | None:
        """Take the planned row's outputs; returns the next delta, or None (nothing to say yet)."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("complete() without plan()")
        try:
            if pending.plan is None:
                self._prefilled(pending, hidden)
                return None
            return self._decoded(pending, logits, hidden)
        finally:
            self.session._lock.release()

    def abort(self) -> None:
        """The planned forward failed: the reply ends as cancelled (its caches may hold garbage past the
        cached prefix, which the next forward overwrites)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            self._finish("cancelled")
        finally:
            self.session._lock.release()

    # -- internals (session lock held) -------------------------------------------------------------------
    def _start(self) -> None:
        from llm.chat_turns import ChatTurns
        from llm.session import SessionStats

        session = self.session
        if session._open is not None and session._open.role == "user":
            ChatTurns.end_user_turn(session)  # closed without `Session`'s prefill: the rows prefill it
        self.reply = session._reply_turn()
        session._fit(session.tokens(), reserve=min(self.max_tokens, session.max_context // 2))
        self.version = session._version
        self._stats = SessionStats()
        session.last_reply, session.finish_reason = self._stats, None
        self._emitted = len(session.tokenizer.decode(self.reply.tokens)) if self.reply.tokens else 0
        self._started = 0.0  # set when the prefill is done (as before: generate_s excludes the prefill)
        self.phase = Phase.RUNNING

    def _plan(self, prefill_limit: int, max_draft: int | None) -> BatchRow | None:
        session = self.session
        if self.phase is Phase.FINISHED:
            return None
        if self.phase is Phase.NEW:
            self._start()
        if self._reason is None:
            if self.cancel is not None and self.cancel.is_set():
                self._reason = "cancelled"
            elif session._version != self.version or session._open is not self.reply:
                self._reason = "cancelled"  # history changed under us (discard/truncate/extend)
        if self._reason is not None:
            self._finish(self._reason)
            return None
        context = session.tokens()
        goal = len(context) - 1
        common = min(common_prefix(session._cached, context), goal)
        del session._cached[common:]
        hidden = needs_hidden(session.drafter)
        if goal > common:  # the cache lacks part of the conversation: prefill it first
            piece = context[common : min(goal, common + prefill_limit)]
            row = BatchRow(piece, session.cache, common, logits="none", hidden=hidden)
            self._pending = _Pending(row, None, context, time.perf_counter())
            return row
        if not self._started:
            self._started = time.perf_counter()
        room = session.max_context - len(context)
        if room <= 0:
            self._finish("context")
            return None
        k = min(session.k.k, room - 1, session.k.k if max_draft is None else max_draft)
        plan = plan_step(session.cache, context, session.drafter, k, self.sampling, session.generator)
        row = BatchRow(plan.fed, session.cache, plan.position, logits="all", hidden=hidden)
        self._pending = _Pending(row, plan, context, time.perf_counter())
        return row

    def _prefilled(self, pending: _Pending, hidden) -> None:
        session, row = self.session, pending.row
        if hidden is not None:
            session.drafter.observe(row.start, row.tokens, hidden)
        session._cached += row.tokens
        stats = session.stats
        stats.prefill_forwards += 1
        stats.prefill_tokens += len(row.tokens)
        stats.prefill_s += time.perf_counter() - pending.planned_at
        goal = len(pending.context) - 1
        if len(session._cached) == goal and session.drafter is not None:
            session.drafter.prefill(pending.context[:goal])

    def _decoded(self, pending: _Pending, logits, hidden) -> ReplyDelta | None:
        from llm.session import ReplyDelta, _find_stop, _stable_length

        session, stats, reply = self.session, self._stats, self.reply
        result = finish_step(pending.plan, logits, hidden, session.drafter, self.sampling, session.generator)
        session._cached = pending.context + result.tokens[:-1]  # pending + accepted drafts were fed
        session.k.update(result.drafted, result.accepted)
        new, reason = result.tokens, None
        for i, token in enumerate(new):
            if token in session.eos_ids:
                new, reason = new[:i], "eos"
                break
        if self._produced + len(new) >= self.max_tokens:
            new, reason = new[: self.max_tokens - self._produced], reason or "length"
        self._produced += len(new)
        reply.tokens += new
        stats.steps += 1
        stats.generated += len(result.tokens)
        stats.drafted += result.drafted
        stats.accepted += result.accepted
        stats.draft_s += result.draft_s
        stats.verify_s += result.verify_s
        stats.step_sizes.append(len(result.tokens))
        if stats.first_token_s is None:
            stats.first_token_s = time.perf_counter() - self._started
        text = session.tokenizer.decode(reply.tokens)
        cut = _find_stop(text, self.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
            reply.tokens = session._encode(text)
        safe = len(text) if reason else _stable_length(text, self.stop)
        delta = text[self._emitted : safe]
        self._emitted = max(self._emitted, safe)
        reply.text = text
        self._reason = reason
        return ReplyDelta(delta, new) if delta or new else None

    def _finish(self, reason: str) -> None:
        session, stats = self.session, self._stats
        self.phase = Phase.FINISHED
        stats.generate_s = time.perf_counter() - (self._started or time.perf_counter())
        session.stats.add(stats)
        session.finish_reason = reason
        if reason != "cancelled" and session._open is self.reply:
            session._close_open()
