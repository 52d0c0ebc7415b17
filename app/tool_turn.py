"""One text turn with tools (Python API, sequential): decide, call, run the tool, answer with its result.

    outcome = await tool_turn(session, registry, "Add Maria to Saturday's party, she's vegetarian")

The session's system prompt must already list the tools (`tools_system_prompt`). Whether to call is the
model's: `call_probability` against `threshold` (None = always call, for callers that know the turn is a
command, e.g. a benchmark of argument quality). Not yet wired into `Conversation` (docs/tools.md).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from app.tools import ToolRegistry, ToolResult
from llm.tool_format import WrittenCall, call_probability, style_for, tool_response, tools_prompt, write_call


def tools_system_prompt(base: str, registry: ToolRegistry, tokenizer: Any) -> str:
    return f"{base}\n\n{tools_prompt(registry.specs, style_for(tokenizer))}".strip()


@dataclass
class ToolTurn:
    call: WrittenCall | None
    result: ToolResult | None
    answer: str
    p_call: float
    timings_ms: dict[str, float] = field(default_factory=dict)


async def tool_turn(
    session: Any, registry: ToolRegistry, user_text: str, threshold: float | None = 0.05, max_tokens: int = 48
) -> ToolTurn:
    started = time.perf_counter()

    def ms() -> float:
        return round(1000.0 * (time.perf_counter() - started), 1)

    session.extend(user_text)
    p_call = await asyncio.to_thread(call_probability, session)
    timings = {"decision_ms": ms()}
    if threshold is not None and p_call < threshold:
        answer = "".join(d.text for d in await asyncio.to_thread(lambda: list(session.generate(max_tokens))))
        return ToolTurn(None, None, answer.strip(), p_call, {**timings, "answer_ms": ms()})
    call = await asyncio.to_thread(write_call, session, registry.specs)
    timings["tool_call_ms"] = ms()
    result = await registry.call(call.name, call.arguments)
    timings["tool_result_ms"] = ms()
    session.extend(tool_response(result.for_model()))
    first: list[float] = []

    def answer_steps() -> str:
        text = ""
        for delta in session.generate(max_tokens):
            if delta.text and not first:
                first.append(ms())
            text += delta.text
        return text

    answer = await asyncio.to_thread(answer_steps)
    timings["first_answer_token_ms"] = first[0] if first else ms()
    return ToolTurn(call, result, answer.strip(), p_call, timings)
