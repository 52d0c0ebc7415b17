"""An OpenAI-compatible chat API (`/v1/chat/completions`, `/v1/models`) over the assistant's LLM.

Why its own port and framework: the main port is a `websockets` server, whose HTTP side answers only GET
requests (the page, and websocket upgrades); a chat completion is a POST with a body and, when streamed,
a long server-sent-events response. `aiohttp` serves that in the same process and on the same event loop,
so the API shares the loaded models, the LLM lane and the admission rules (host, token, origin) with the
websocket port; `specvoice serve` opens it on `server.api_port` (default: the main port + 1).

Every request gets its own short-lived LLM session; prefill and decode steps run on the assistant's LLM
lane, interleaved with the voice conversations' steps, never on the event loop. A client that goes away
mid-stream cancels its generation at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from typing import Any

from aiohttp import web
from websockets.datastructures import Headers
from websockets.http11 import Request as HeadersView

from app.config import Config
from app.server import http
from app.server.openai_schema import (
    ApiError,
    ChatRequest,
    chunk,
    completion,
    finish_reason,
    model_list,
    model_object,
    parse_chat_request,
    usage,
)
from app.server.session_cache import SessionCache

log = logging.getLogger(__name__)
MODEL_ID = "specvoice"
CONTEXT_LIMIT = 4096  # tokens of prompt + completion per request (the session's KV cache is sized to fit)


def _json(status: int, data: object) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json",
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})  # fmt: skip


class _Generation:
    """One request's session and reply steps, driven from the event loop, computed on the LLM lane."""

    def __init__(self, api: ChatApi, req: ChatRequest) -> None:
        self.api, self.req = api, req
        self.lane = api.assistant.lanes.llm
        self.cancel = threading.Event()
        self.session: Any = None
        self.steps: Any = None
        self.prompt_tokens = 0
        self.prefill_tokens = 0  # of those, computed for this request (the rest came from a kept session)
        self.completion_tokens = 0
        self.reused = False
        self.failed = False  # a streamed reply that broke off after its headers were sent

    def _open(self) -> None:
        req, llm = self.req, self.api.assistant.llm
        kwargs: dict[str, Any] = {"system_prompt": req.system}
        if req.seed is not None:
            kwargs["seed"] = req.seed
        tokenizer = getattr(llm, "tokenizer", None)
        if tokenizer is not None:  # local engine: a KV cache just large enough for this request
            limit = min(CONTEXT_LIMIT, llm.target.args.max_positions)
            prompt = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 8 for t in req.texts())
            needed = prompt + req.max_tokens + 16  # an over-estimate: the session never drops a turn to fit
            if needed > limit:
                raise ApiError(400, f"this request needs about {needed} tokens of context; the limit is "
                               f"{limit} (shorten the messages or max_tokens)", "context_length_exceeded",
                               "messages")  # fmt: skip
            # Room to grow: the conversation's next request may reuse this session (SessionCache).
            kwargs["max_context"] = min(limit, max(1024, -(-2 * needed // 256) * 256))
            found = self.api.sessions.take(req.system, req.pairs, needed) if req.seed is None else None
        else:
            found = None
        pairs = req.pairs
        if found is not None:
            session, held = found
            self.reused, pairs = True, req.pairs[held:]
            if session.history[-1]["content"] != req.pairs[held - 1][1]:
                session.truncate_reply(req.pairs[held - 1][1])  # the client's copy of the last reply wins
        else:
            session = llm.session(**kwargs)
        self.session = session
        stats = getattr(session, "stats", None)
        before = stats.prefill_tokens if stats is not None else 0
        for user, reply in pairs:
            session.add_turn(user, reply)
        session.add_turn(req.user)  # closes the user turn: prefills what the session's cache lacks, at once
        if hasattr(session, "tokens"):
            self.prompt_tokens = len(session.tokens())
            self.prefill_tokens = stats.prefill_tokens - before

    async def start(self) -> None:
        from llm.sampling import SamplingParams

        await self.lane.run(self._open)
        sampling = SamplingParams(self.req.temperature, self.req.top_k, self.req.top_p)
        self.steps = self.session.generate(max_tokens=self.req.max_tokens, sampling=sampling,
                                           cancel=self.cancel, stop=self.req.stop)  # fmt: skip

    async def next_text(self) -> str | None:
        """The next piece of text (possibly ""), or None when the reply is over."""
        from app.batch_lane import next_delta  # batched with the voice replies' steps on a BatchLane

        delta = await next_delta(self.lane, self.steps)
        if delta is None:
            return None
        self.completion_tokens += len(delta.token_ids)
        return delta.text

    async def close(self) -> None:
        self.cancel.set()
        if self.steps is not None:
            await asyncio.shield(self.lane.run(self.steps.close))

    @property
    def finish_reason(self) -> str | None:
        return getattr(self.session, "finish_reason", None)

    def usage(self) -> dict[str, int]:
        remote = getattr(self.session, "last_usage", None)  # a remote backend reports the server's counts
        if remote is not None and not self.completion_tokens:
            return usage(int(remote.prompt_tokens or 0), int(remote.completion_tokens or 0))
        return usage(self.prompt_tokens, self.completion_tokens)


class ChatApi:
    """The HTTP app. `assistant` needs `.llm.session(...)` and `.lanes.llm` (as `app.assistant.Assistant`)."""

    def __init__(self, assistant: Any, config: Config, port: int | None = None, sessions: int | None = None) -> None:
        from app.server.app import check_bind

        check_bind(config)  # beyond loopback only with a token, as the websocket port
        self.assistant, self.config = assistant, config.server
        self.bind_port = self.config.port + 1 if port is None else port
        self.created = int(time.time())
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()
        # requests; completed / cancelled / failed generations; refused (any error answer)
        self.counts: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)  # finished generations
        self.sessions = SessionCache(self.config.max_sessions if sessions is None else sessions)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # -- app -----------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_message_bytes, middlewares=[self._guard])
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model}", self.model)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Admission (host, origin, token: the websocket port's own checks, app/server/http.py) before any
        route, and OpenAI-style JSON for every error."""
        try:
            # The checks take a `websockets` request; the same headers (repeats kept) in that shape.
            view = HeadersView(request.path_qs, Headers(list(request.headers.items())))
            try:
                host, auth = http.single_header(view, "Host"), http.single_header(view, "Authorization")
                origin_ok = http.origin_ok(self.config, view)
            except http.BadRequest as exc:
                raise ApiError(400, str(exc), "bad_request") from None
            if not http.host_allowed(self.config, host):
                raise ApiError(403, "host not allowed (see server.allowed_hosts)", "host_not_allowed")
            if not origin_ok:
                raise ApiError(403, "origin not allowed (see server.allowed_origins)", "origin_not_allowed")
            if not http.bearer_ok(self.config, auth):
                raise ApiError(401, "a valid token is required (Authorization: Bearer <server token>)",
                               "invalid_api_key", type_="authentication_error")  # fmt: skip
            return await handler(request)
        except ApiError as exc:
            self.counts["refused"] += 1
            return _json(exc.status, exc.body())
        except web.HTTPException as exc:  # routing (404/405) and the body-size limit (413)
            code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
            return _json(exc.status, ApiError(exc.status, exc.reason, code).body())

    # -- routes --------------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        return _json(200, model_list(MODEL_ID, self.created))

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name != MODEL_ID:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {MODEL_ID!r}",
                           "model_not_found")  # fmt: skip
        return _json(200, model_object(MODEL_ID, self.created))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        self.counts["requests"] += 1
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"the request body is over {self.config.max_message_bytes} bytes "
                           "(server.max_message_bytes)", "request_too_large") from None  # fmt: skip
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON", "invalid_json") from None
        req = parse_chat_request(body)
        if self.active >= self.config.max_sessions:
            raise ApiError(429, f"server busy: {self.active} completions in progress (server.max_sessions)",
                           "server_busy", type_="rate_limit_error")  # fmt: skip
        self.active += 1
        self.idle.clear()
        gen = _Generation(self, req)
        outcome = "cancelled"
        try:
            await gen.start()
            if req.stream:
                response = await self._stream(request, req, gen)
            else:
                response = await self._whole(req, gen)
            outcome = "failed" if gen.failed else "completed"
            return response
        except (ConnectionResetError, asyncio.CancelledError):
            raise  # the client went away: `finally` stops the generation
        except ApiError:
            outcome = "failed"
            raise
        except Exception as exc:
            from llm.remote import RemoteLLMError

            outcome = "failed"
            log.exception("chat completion failed")
            raise ApiError(502 if isinstance(exc, RemoteLLMError) else 500,
                           f"generation failed: {type(exc).__name__}: {exc}", "generation_failed",
                           type_="server_error") from None  # fmt: skip
        finally:
            await gen.close()
            self.counts[outcome] += 1
            self.recent.append({"outcome": outcome, "finish_reason": gen.finish_reason, "reused": gen.reused,
                                "prompt_tokens": gen.prompt_tokens, "prefill_tokens": gen.prefill_tokens,
                                "completion_tokens": gen.completion_tokens})  # fmt: skip
            if outcome == "completed" and gen.finish_reason in ("eos", "stop", "length") and gen.prompt_tokens:
                self.sessions.put(gen.session)  # a local session whose reply is closed: reusable
            self.active -= 1
            if self.active == 0:
                self.idle.set()

    async def _whole(self, req: ChatRequest, gen: _Generation) -> web.Response:
        text = []
        while (piece := await gen.next_text()) is not None:
            text.append(piece)
        body = completion(req, MODEL_ID, "".join(text), finish_reason(gen.finish_reason), gen.usage())
        return _json(200, body)

    async def _stream(self, request: web.Request, req: ChatRequest, gen: _Generation) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})  # fmt: skip
        await response.prepare(request)

        async def send(data: object) -> None:
            await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")

        await send(chunk(req, MODEL_ID, {"role": "assistant", "content": ""}))
        try:
            while (piece := await gen.next_text()) is not None:
                if piece:
                    await send(chunk(req, MODEL_ID, {"content": piece}))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # headers are gone: report it in the stream, as the API does
            log.exception("chat completion stream failed")
            gen.failed = True
            await send(ApiError(502, f"generation failed: {type(exc).__name__}: {exc}", "generation_failed",
                                type_="server_error").body())  # fmt: skip
            await response.write(b"data: [DONE]\n\n")
            return response
        await send(chunk(req, MODEL_ID, {}, finish_reason(gen.finish_reason)))
        if req.include_usage:
            await send(chunk(req, MODEL_ID, None, use=gen.usage()))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._runner is not None, "API not started"
        return self._runner.addresses[0][1]

    async def start(self) -> None:
        # handler_cancellation: a client that disconnects cancels its handler, hence its generation.
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                                     handler_cancellation=True, shutdown_timeout=2.0)  # fmt: skip
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.host, self.bind_port)
        await self._site.start()
        log.info("OpenAI-compatible API on http://%s:%d/v1", self.config.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ChatApi:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def api_port(config: Config, main_port: int) -> int | None:
    """Where `specvoice serve` opens the API: None when off (`server.api_port = 0`); the main port + 1 by
    default; a free port when the main one was picked freely (port 0)."""
    chosen = config.server.api_port
    if chosen == 0:
        return None
    if chosen is not None:
        return chosen
    return 0 if config.server.port == 0 else main_port + 1
