"""The chat-turn bookkeeping that the local `llm.Session` and the remote `RemoteSession` share.

Both keep closed turns plus one open turn (the user's growing transcript or the assistant's reply) and
must edit them the same way (discard, truncate to what was spoken, keep a cancelled reply whole when the
user goes on), so that swapping backends does not change what the conversation remembers. What differs
goes through hooks: the local session also keeps each turn's token ids and a flattened token list of the
closed turns (`_set_text`, `_turn_closed`, `_turns_changed`) and prefills as the user speaks
(`_user_text_changed`); the remote one keeps only (stripped) text.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llm.sampling import GREEDY, SamplingParams

if TYPE_CHECKING:
    from llm.session import ReplyDelta

_NO_SPACE_BEFORE = tuple(".,!?;:)]}'\"%…")


class SessionError(RuntimeError):
    """A call that does not fit the session's state (e.g. closing an empty user turn)."""


@dataclass
class Turn:
    role: str
    text: str = ""
    tokens: list[int] = field(default_factory=list)  # the text's token ids (local session only)


class ChatTurns:
    """Closed turns + the open one, and the edits on them; subclasses add the model side."""

    def __init__(self, system_prompt: str = "") -> None:
        self.system_prompt = system_prompt
        self._turns: list[Turn] = []  # closed turns, oldest first (user / assistant alternate)
        self._open: Turn | None = None  # the open user turn or assistant reply
        self._lock = threading.RLock()
        self._version = 0  # bumped by every history change; a running reply stops when it moves
        self.finish_reason: str | None = None

    # -- hooks -----------------------------------------------------------------------------------------
    def _set_text(self, turn: Turn, text: str) -> None:
        """Store a turn's new text (the local session re-encodes its tokens, the remote one strips)."""
        turn.text = text

    def _turn_closed(self, turn: Turn) -> None:
        """`turn` just joined the closed turns (the local session appends its tokens)."""

    def _turns_changed(self) -> None:
        """The closed turns were edited in place (the local session rebuilds its closed tokens)."""

    def _user_text_changed(self) -> None:
        """The open user turn's text changed while the user speaks (the local session prefills)."""

    def generate(
        self, max_tokens: int, sampling: SamplingParams, cancel: threading.Event | None, stop: tuple[str, ...]
    ) -> Iterator[ReplyDelta]:
        raise NotImplementedError

    # -- history ---------------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict[str, str]]:
        """Messages (closed turns and the open one) in the chat-template format."""
        turns = self._turns + ([self._open] if self._open else [])
        return [{"role": "system", "content": self.system_prompt}] + [
            {"role": t.role, "content": t.text} for t in turns
        ]

    def _close_open(self) -> None:
        if self._open is not None:
            self._turns.append(self._open)
            self._turn_closed(self._open)
            self._open = None
            self._version += 1

    # -- user turn -------------------------------------------------------------------------------------
    def _user_turn(self) -> Turn:
        """The open user turn, opening one (and closing a reply left open) if needed."""
        if self._open is not None and self._open.role == "user":
            return self._open
        if self._open is not None:  # a reply left open (cancelled, never truncated): keep it whole
            self._close_open()
        self._open = Turn("user")
        return self._open

    def extend(self, text: str) -> None:
        """Append transcript text to the user turn (a space between words unless `text` starts with
        whitespace or punctuation)."""
        with self._lock:
            turn = self._user_turn()
            if turn.text and text and not text[0].isspace() and not turn.text[-1].isspace():
                if not text.startswith(_NO_SPACE_BEFORE):
                    text = " " + text
            self._set_user_text(turn, turn.text + text)

    def revise(self, full_user_text: str) -> None:
        """Replace the user turn's text."""
        with self._lock:
            self._set_user_text(self._user_turn(), full_user_text)

    def _set_user_text(self, turn: Turn, text: str) -> None:
        self._set_text(turn, text)
        self._version += 1
        self._user_text_changed()

    def end_user_turn(self) -> None:
        """Close the user turn and open the assistant's."""
        with self._lock:
            # Whitespace-only text has no tokens either: the same check for both sessions.
            if self._open is None or self._open.role != "user" or not self._open.text.strip():
                raise SessionError("no user text to close: call extend()/revise() first")
            self._close_open()
            self._open = Turn("assistant")

    def add_turn(self, user_text: str, reply_text: str | None = None) -> None:
        """A whole text turn; with `reply_text`, the assistant's answer is added to history as well."""
        with self._lock:
            turn = self._user_turn()  # no streaming prefill: the text is complete, end_user_turn does it once
            self._set_text(turn, user_text)
            self._version += 1
            self.end_user_turn()
            if reply_text is not None:
                self._set_text(self._open, reply_text)
                self._close_open()

    # -- reply -----------------------------------------------------------------------------------------
    def _reply_turn(self) -> Turn:
        """The open reply: closes the user turn (`end_user_turn`), continues a reply left open, or opens a
        new assistant turn after a closed one."""
        if self._open is not None and self._open.role == "user":
            self.end_user_turn()
        elif self._open is None:
            self._open = Turn("assistant")
        return self._open

    def _last_assistant(self) -> Turn | None:
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
            self._turns_changed()
            self.finish_reason = None

    def truncate_reply(self, spoken_text: str) -> None:
        """After a barge-in: the latest reply keeps only the text that was actually spoken."""
        with self._lock:
            turn = self._last_assistant()
            if turn is None:
                raise SessionError("there is no reply to truncate")
            self._set_text(turn, spoken_text)
            self._version += 1
            if turn is self._open:
                self._close_open()
            else:
                self._turns_changed()

    async def agenerate(self, max_tokens: int = 64, sampling: SamplingParams = GREEDY,
                        cancel: threading.Event | None = None, stop: tuple[str, ...] = ()
                        ) -> AsyncIterator[ReplyDelta]:  # fmt: skip
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
