"""A chat whose replies come from an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, specvoice).

This is how a deployment grows past one machine: the LLM runs on its own cluster, the audio side of
specvoice talks to it over HTTP. `RemoteLLM` stands where the local `Engine` stands (`.session(...)`), and
`RemoteSession` offers the calls the conversation loop makes on a local `Session` (extend / revise /
end_user_turn / add_turn / generate / discard_reply / truncate_reply / history / stats):

- prefill calls (`extend`, `revise`) only keep the text: there is no cache here to fill;
- every reply sends the whole history as messages in one stable order (system, then the turns oldest
  first), so a server with prefix caching finds the previous request's tokens and prefills only the new
  turn;
- a reply streams through the official `openai` SDK on one background event loop shared by all sessions;
  cancelling it (barge-in, a dropped preemptive reply) cancels that task, which closes the HTTP stream, so
  the server stops generating too;
- timeouts and retries are the SDK's (per request), and every failure surfaces as one `RemoteLLMError`
  naming the server, never as a hang.

This module holds the client side (settings, the SDK client, the streaming task, errors);
llm/remote_session.py holds the history and the reply iterator. Never imports app/: the settings arrive as
a `RemoteConfig`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm.remote_session import RemoteSession


class RemoteLLMError(RuntimeError):
    """The remote LLM could not answer (unreachable, timed out, refused the request); says which and why."""


@dataclass
class RemoteConfig:
    base_url: str  # e.g. http://llm-cluster:8000/v1
    model: str
    api_key: str = ""
    timeout_s: float = 10.0  # connect and between two streamed chunks
    max_retries: int = 2  # of the request (connection errors, 408/409/429/5xx), with the SDK's backoff
    max_history_chars: int = 24_000  # oldest turns are dropped beyond this (a prompt-size guard)
    extra_body: dict[str, Any] = field(default_factory=dict)


class RemoteLLM:
    """One client and one event-loop thread for every session of the process (what `Engine` is locally)."""

    drafter_name = "remote"

    def __init__(self, config: RemoteConfig) -> None:
        try:
            import openai
        except ImportError:
            raise RemoteLLMError(
                "llm.backend = 'openai' needs the openai package: pip install 'specvoice[remote]'"
            ) from None
        if not config.base_url:
            raise RemoteLLMError("llm.backend = 'openai' needs llm.base_url (e.g. http://host:8000/v1)")
        self.config = config
        self._openai = openai
        self.client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key or "none",  # servers without auth ignore it; the SDK insists on one
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="specvoice-remote-llm", daemon=True)
        self._thread.start()

    def session(self, *, system_prompt: str = "", seed: int | None = None, **_: Any) -> RemoteSession:
        """A fresh chat (cheap: no cache). Keyword arguments the local engine takes are accepted."""
        from llm.remote_session import RemoteSession

        return RemoteSession(self, system_prompt=system_prompt, seed=seed)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.client.close(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()

    def _error(self, exc: BaseException) -> RemoteLLMError:
        openai, where = self._openai, f"remote LLM at {self.config.base_url}"
        if isinstance(exc, openai.APITimeoutError):
            return RemoteLLMError(
                f"{where} did not answer within {self.config.timeout_s:g} s "
                f"({self.config.max_retries} retries): llm.timeout_s / llm.max_retries"
            )
        if isinstance(exc, openai.APIConnectionError):
            return RemoteLLMError(
                f"cannot reach the {where} ({self.config.max_retries} retries): {exc.__cause__ or exc}"
            )
        if isinstance(exc, openai.APIStatusError):
            return RemoteLLMError(f"{where} refused the request: HTTP {exc.status_code}: {exc.message}")
        return RemoteLLMError(f"{where} failed: {type(exc).__name__}: {exc}")

    async def _stream(self, request: dict[str, Any], out: queue.SimpleQueue) -> None:
        """Runs on `self.loop`: streams one reply into `out` as ("text"|"finish"|"usage"|"error"|"end", x)."""
        try:
            stream = await self.client.chat.completions.create(**request)
            async with stream:  # leaving it (also by cancellation) closes the HTTP response
                async for chunk in stream:
                    if chunk.usage is not None:
                        out.put(("usage", chunk.usage))
                    for choice in chunk.choices:
                        if choice.delta is not None and choice.delta.content:
                            out.put(("text", choice.delta.content))
                        if choice.finish_reason:
                            out.put(("finish", choice.finish_reason))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure becomes one clear error on the caller's side
            out.put(("error", self._error(exc)))
        finally:
            out.put(("end", None))
