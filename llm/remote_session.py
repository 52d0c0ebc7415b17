"""The chat history of the remote backend and its streamed replies (see llm/remote.py for the why).

`RemoteSession` keeps the same history semantics as the local `llm.Session` (an open user turn that
grows, a reply that is discarded, truncated to what was heard, or kept whole when the user goes on);
`RemoteReply` turns one streamed request into the `generate` iterator the conversation loop drives.
"""

from __future__ import annotations

import asyncio
import enum
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from llm.chat_turns import ChatTurns, Turn
from llm.remote import RemoteLLM
from llm.sampling import GREEDY, SamplingParams
from llm.session import ReplyDelta, SessionStats

POLL_S = 0.05  # how often a waiting reply looks at its cancel flag (cancellation latency on our side)
_FINISH = {"stop": "eos", "length": "length", "content_filter": "content_filter"}


class _State(enum.Enum):
    """A reply: NEW (nothing sent) → STREAMING → SERVER_DONE (the server finished; text may be queued)
    → OVER. Cancellation, a history change or an error go straight to OVER."""

    NEW = "new"
    STREAMING = "streaming"
    SERVER_DONE = "server_done"
    OVER = "over"


class RemoteSession(ChatTurns):
    """A chat history that asks a remote server for each reply. Same call semantics as `llm.Session`."""

    def __init__(self, llm: RemoteLLM, *, system_prompt: str = "", seed: int | None = None) -> None:
        super().__init__(system_prompt)  # turns, open turn, lock, version
        self.llm, self.seed = llm, seed
        self.stats = SessionStats()
        self.last_reply = SessionStats()
        self.last_usage: Any = None  # the server's token counts for the latest reply, when it sent them

    # -- history (history / extend / revise / add_turn / discard_reply / truncate_reply: ChatTurns) ---
    def _set_text(self, turn: Turn, text: str) -> None:
        turn.text = text.strip()  # what is sent; no tokens to keep

    def messages(self) -> list[dict[str, str]]:
        """What the next request sends: system + closed turns + the open user turn, oldest first."""
        with self._lock:
            turns = self._turns + ([self._open] if self._open and self._open.role == "user" else [])
            head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            return head + [{"role": t.role, "content": t.text} for t in turns]

    def _fit(self) -> None:
        """Drop the oldest user/assistant pairs while the history is over `max_history_chars` (the
        prefix changes then, so the server's cache misses once; pairs keep user/assistant alternation)."""
        budget = self.llm.config.max_history_chars
        size = lambda: len(self.system_prompt) + sum(len(t.text) for t in self._turns)  # noqa: E731
        while size() > budget and len(self._turns) >= 2:
            del self._turns[:2]
            self._version += 1

    def end_of_turn_probability(self, user_text: str) -> float | None:
        """Unknown remotely: the chat API has no next-token probabilities inside an open user turn."""
        return None

    def generate(self, max_tokens: int = 64, sampling: SamplingParams = GREEDY,
                 cancel: threading.Event | None = None, stop: tuple[str, ...] = ()) -> RemoteReply:  # fmt: skip
        """Reply deltas from the server; nothing is sent until the first `next()`. See `RemoteReply`."""
        return RemoteReply(self, max_tokens, sampling, cancel or threading.Event(), stop)

    def _request(self, max_tokens: int, sampling: SamplingParams, stop: tuple[str, ...]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.llm.config.model,
            "messages": self.messages(),
            "max_tokens": max_tokens,  # understood by every server (max_completion_tokens is newer)
            "temperature": sampling.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sampling.top_p < 1.0:
            request["top_p"] = sampling.top_p
        extra = dict(self.llm.config.extra_body)
        if sampling.top_k > 0:
            extra["top_k"] = sampling.top_k  # not in the OpenAI API; vLLM, SGLang and llama.cpp take it
        if extra:
            request["extra_body"] = extra
        if stop:
            request["stop"] = list(stop)[:4]
        if self.seed is not None:
            request["seed"] = self.seed
        return request


class RemoteReply(Iterator[ReplyDelta]):
    """One streamed reply. `next()` blocks until text arrives (merging what has queued up), the reply
    ends, the `cancel` event is set or the history changes; `close()` may come from any thread.

    Like the local session: a finished reply joins the history; a cancelled one stays open until
    `truncate_reply` / `discard_reply` (or the next `extend`, which keeps it whole). A reply that is
    already partly written is asked for afresh (chat servers cannot continue an assistant message).
    """

    def __init__(self, session: RemoteSession, max_tokens: int, sampling: SamplingParams,
                 cancel: threading.Event, stop: tuple[str, ...]) -> None:  # fmt: skip
        self.session, self.cancel = session, cancel
        self._args = (max_tokens, sampling, stop)
        self._lock = threading.Lock()  # one next()/close() at a time
        self.state = _State.NEW
        self._future: Any = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._turn: Turn | None = None
        self._version = -1
        self._stats = SessionStats()
        self._started = 0.0
        self._finish: str | None = None

    def __iter__(self) -> RemoteReply:
        return self

    def _start(self) -> None:
        s = self.session
        with s._lock:
            self._turn = s._reply_turn()
            self._turn.text = ""
            s._version += 1  # an older reply still streaming into this turn stops
            s._fit()
            request = s._request(*self._args)
            self._version = s._version
        s.last_reply, s.finish_reason, s.last_usage = self._stats, None, None
        self._started = time.perf_counter()
        llm = s.llm
        self._future = asyncio.run_coroutine_threadsafe(llm._stream(request, self._queue), llm.loop)
        self.state = _State.STREAMING

    def __next__(self) -> ReplyDelta:
        with self._lock:
            if self.state is _State.NEW:
                self._start()
            while self.state is not _State.OVER:
                if self.cancel.is_set() or self.session._version != self._version:
                    self._end("cancelled")
                elif self.state is _State.SERVER_DONE:  # and all its text was delivered
                    self._end(self._finish or "eos")
                elif text := self._take():
                    self._add_text(text)
                    return ReplyDelta(text, [])
            raise StopIteration

    def _take(self) -> str:
        """All text queued by now (waiting up to POLL_S for the first item); notes finish, usage, end."""
        try:
            kind, value = self._queue.get(timeout=POLL_S)
        except queue.Empty:
            return ""
        text = ""
        while True:
            if kind == "text":
                text += value
            elif kind == "finish":
                self._finish = _FINISH.get(value, value)
            elif kind == "usage":
                self.session.last_usage = value
            elif kind == "error":
                self._end("error")
                raise value
            elif kind == "end":
                self.state = _State.SERVER_DONE
                return text
            try:
                kind, value = self._queue.get_nowait()
            except queue.Empty:
                return text

    def _add_text(self, text: str) -> None:
        s, stats = self.session, self._stats
        with s._lock:
            if self._turn is s._open:
                self._turn.text += text
        stats.steps += 1
        stats.generated += 1  # chunks until the server's usage arrives (then its token count)
        if stats.first_token_s is None:
            stats.first_token_s = time.perf_counter() - self._started

    def _end(self, reason: str) -> None:
        self.state = _State.OVER
        s, stats = self.session, self._stats
        if self._future is not None and not self._future.done():
            self._future.cancel()  # closes the HTTP stream: the server stops generating
        usage = s.last_usage
        if reason != "cancelled" and usage is not None:
            stats.generated = int(getattr(usage, "completion_tokens", 0) or stats.generated)
            stats.prefill_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        stats.generate_s = time.perf_counter() - self._started
        s.stats.add(stats)
        with s._lock:
            if s._open is self._turn and s._version == self._version and reason != "cancelled":
                if reason == "error":  # no answer: reopen the user's turn, so their next words extend it
                    s.discard_reply()
                else:
                    self._turn.text = self._turn.text.strip()
                    s._close_open()
        s.finish_reason = reason

    def close(self) -> None:
        """Stop the reply (from any thread): the HTTP stream is closed within one poll interval."""
        self.cancel.set()
        with self._lock:
            if self.state in (_State.STREAMING, _State.SERVER_DONE):
                self._end("cancelled")
            self.state = _State.OVER
