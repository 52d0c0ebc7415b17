"""The wire shapes of the OpenAI-compatible chat API: request validation and response objects.

Validation is strict about what changes the answer (roles, content, token limits, sampling) and lenient
about the rest (clients send many fields we have no use for: `user`, `metadata`, `store`, ...). Anything
wrong is an `ApiError` that becomes HTTP 400 with the OpenAI error object (`message`, `type`, `param`,
`code`), never a 500.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGES = 256
MAX_STOP = 4
MAX_STOP_CHARS = 64
MAX_COMPLETION_TOKENS = 1024
DEFAULT_COMPLETION_TOKENS = 256
SYSTEM_ROLES = ("system", "developer")  # "developer" is what newer clients call the system message
CHAT_ROLES = ("user", "assistant")
_FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


class ApiError(Exception):
    """A request we refuse; carries the HTTP status and the OpenAI error object's fields."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type_: str = "invalid_request_error") -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code, param)


@dataclass
class ChatRequest:
    """A validated request: the system prompt, closed (user, assistant) pairs, the user turn to answer."""

    model: str
    system: str
    pairs: list[tuple[str, str]]
    user: str
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def texts(self) -> list[str]:
        return [self.system, self.user, *(t for pair in self.pairs for t in pair)]


def _content(message: dict[str, Any], where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, list):  # content parts: only text ones are understood
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad("only text content parts ({'type': 'text', 'text': ...}) are supported",
                          f"{where}.content[{i}]", "unsupported_content")  # fmt: skip
            texts.append(part["text"])
        return "".join(texts)
    raise bad("content must be a string or a list of text parts", f"{where}.content")


def _conversation(messages: Any) -> tuple[str, list[tuple[str, str]], str]:
    """Leading system messages → the system prompt; then user/assistant turns (consecutive messages of
    one role are joined), which must start and end with the user."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty array", "messages", "invalid_type")
    if len(messages) > MAX_MESSAGES:
        raise bad(f"at most {MAX_MESSAGES} messages per request", "messages", "too_many_messages")
    system: list[str] = []
    turns: list[list[str]] = []  # [role, text]
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad("each message must be an object", where, "invalid_type")
        role = message.get("role")
        if role in SYSTEM_ROLES:
            if turns:
                raise bad("system messages are supported only before the conversation",
                          f"{where}.role", "unsupported_role")  # fmt: skip
            system.append(_content(message, where))
            continue
        if role not in CHAT_ROLES:
            raise bad(f"role {role!r} is not supported (use system, developer, user, assistant)",
                      f"{where}.role", "unsupported_role")  # fmt: skip
        if role == "assistant" and message.get("tool_calls"):
            raise bad("tool calls are not supported", f"{where}.tool_calls", "unsupported_parameter")
        text = _content(message, where)
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n\n" + text
        else:
            turns.append([role, text])
    if not turns or turns[0][0] != "user":
        raise bad("the conversation must start with a user message", "messages", "invalid_conversation")
    if turns[-1][0] != "user":
        raise bad("the last message must be from the user", "messages", "invalid_conversation")
    pairs = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    return "\n\n".join(system), pairs, turns[-1][1]


def _number(body: dict, name: str, low: float, high: float, default: float, *, open_low: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"{name} must be a number", name, "invalid_type")
    if value > high or value < low or (open_low and value == low):
        raise bad(f"{name} must be in {'(' if open_low else '['}{low:g}, {high:g}]", name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{name} must be an integer", name, "invalid_type")
    if not low <= value <= high:
        raise bad(f"{name} must be between {low} and {high}", name)
    return value


def parse_chat_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model is required (any name: this server serves one model)", "model", "missing_required_parameter")
    system, pairs, user = _conversation(body.get("messages"))
    for name in ("tools", "functions", "audio"):
        if body.get(name):
            raise bad(f"{name} is not supported", name, "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise bad("only response_format {'type': 'text'} is supported", "response_format", "unsupported_parameter")
    if body.get("n") not in (None, 1):
        raise bad("n must be 1", "n", "unsupported_value")
    limits = [v for name in ("max_completion_tokens", "max_tokens")
              if (v := _integer(body, name, 1, MAX_COMPLETION_TOKENS)) is not None]  # fmt: skip
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is None:
        stop = []
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(
        isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop
    ):
        raise bad(f"stop must be a string or up to {MAX_STOP} non-empty strings of at most "
                  f"{MAX_STOP_CHARS} characters", "stop")  # fmt: skip
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad("stream must be a boolean", "stream", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options", "invalid_type")
    return ChatRequest(
        model=model,
        system=system,
        pairs=pairs,
        user=user,
        max_tokens=min(limits) if limits else DEFAULT_COMPLETION_TOKENS,
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0, open_low=True),
        top_k=_integer(body, "top_k", 0, 1000) or 0,  # not OpenAI's; vLLM and llama.cpp take it
        stop=tuple(stop),
        seed=_integer(body, "seed", -(2**63), 2**63 - 1),
        stream=bool(stream),
        include_usage=bool(options.get("include_usage", False)),
    )


def finish_reason(session_reason: str | None) -> str:
    return _FINISH.get(session_reason or "", "stop")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def completion(req: ChatRequest, model_id: str, text: str, reason: str, use: dict[str, int]) -> dict[str, Any]:
    return {
        "id": req.id,
        "object": "chat.completion",
        "created": req.created,
        "model": model_id,
        "system_fingerprint": None,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": reason,
        }],
        "usage": use,
    }  # fmt: skip


def chunk(req: ChatRequest, model_id: str, delta: dict[str, Any] | None, reason: str | None = None,
          use: dict[str, int] | None = None) -> dict[str, Any]:  # fmt: skip
    """One `chat.completion.chunk`; `delta=None` is the final usage chunk (no choices)."""
    out: dict[str, Any] = {
        "id": req.id,
        "object": "chat.completion.chunk",
        "created": req.created,
        "model": model_id,
        "system_fingerprint": None,
        "choices": [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        ],
    }  # fmt: skip
    if req.include_usage:
        out["usage"] = use  # null on every chunk but the last, as the API does
    return out


def model_list(model_id: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(model_id, created)]}


def model_object(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "specvoice"}
