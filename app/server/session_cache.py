"""Idle chat sessions kept between chat-API requests, so a conversation's next request reuses its KV cache.

A chat-API client resends the whole conversation every turn (that is the API). When a request's messages
extend a kept session's history (same system prompt, same turns, then more), that session is taken and
only the new turns are prefilled: `llm.Session` rolls its cache back to the longest common token prefix by
itself, so the result is the same as a fresh prefill. This is what vLLM's prefix caching or llama.cpp's
slots do, at the granularity of whole conversations, and it is what the remote backend of another
specvoice relies on (docs/scaling.md).
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any


class SessionCache:
    """At most `capacity` idle sessions, least recently used dropped first; thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = 0
        self._idle: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._idle)

    def take(self, system: str, pairs: list[tuple[str, str]], min_context: int) -> tuple[Any, int] | None:
        """The kept session holding the longest prefix of (system, pairs), removed from the cache, and how
        many of the pairs it holds; None when none fits (or its cache is smaller than `min_context`)."""
        with self._lock:
            best: tuple[int, Any, int] | None = None
            for key, session in self._idle.items():
                held = held_pairs(session, system, pairs)
                if held and session.max_context >= min_context and (best is None or held > best[2]):
                    best = (key, session, held)
            if best is None:
                return None
            del self._idle[best[0]]
            self.hits += 1
            return best[1], best[2]

    def put(self, session: Any) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._idle[next(self._ids)] = session
            while len(self._idle) > self.capacity:
                self._idle.popitem(last=False)


def held_pairs(session: Any, system: str, pairs: list[tuple[str, str]]) -> int:
    """How many of `pairs` the session's closed history is, in order (0 = not a prefix). The last held
    reply may differ from the client's copy (whitespace, or a client that edited it): the caller then
    truncates it to the client's text, and the cache rolls back to where the two differ."""
    history = session.history
    if history[0]["content"] != system:
        return 0
    turns = history[1:]
    if not turns or len(turns) % 2 or len(turns) // 2 > len(pairs):
        return 0
    for i in range(0, len(turns), 2):
        user, reply = turns[i], turns[i + 1]
        want_user, want_reply = pairs[i // 2]
        if user["role"] != "user" or reply["role"] != "assistant" or user["content"] != want_user:
            return 0
        if reply["content"].strip() != want_reply.strip() and i + 2 < len(turns):
            return 0
    return len(turns) // 2
