"""Tool turns: the call-or-answer decision, `tool_choice`, and one sequential text turn with tools.

    outcome = await tool_turn(session, registry, "Add Maria to Saturday's party, she's vegetarian")

The session's system prompt must already list the tools (`tools_system_prompt`). Whether to call is the
model's: `call_probability` against `threshold` (None = always call, for callers that know the turn is a
command, e.g. a benchmark of argument quality).

`Conversation` replies (app/reply_stream.py `run_reply`) use `ToolChoice`, `ToolPlan` and `tool_phase`
(decide with `decide_call`, write the call, hold it until a preemptive reply is confirmed, run it with a
filler when slow, feed the result back). Under `auto` the prompt style's policy decides
(llm/tool_format.py `call_policy`): for the compact format of the 135M default with the tools' worked
examples, P(call) against a threshold calibrated by `bench tools` on its dev set, and calls written with
the channel tool choice and spans; otherwise (a model with its own tool template such as Qwen, or tools
without examples) the model's first-token choice under the reply's sampling.
`Conversation.call_threshold` / `call_options` override them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from app.events import ReplyTextDelta, ToolCall
from app.events import ToolResult as ToolResultEvent
from app.reply_stream import new_call_id
from app.tools import ToolRegistry, ToolResult
from llm.sampling import GREEDY, SamplingParams, choose
from llm.tool_format import (
    CALL_OPEN,
    CallPolicy,
    ToolSpec,
    WrittenCall,
    call_policy,
    call_probability,
    style_for,
    tool_response,
    tools_prompt,
    write_call,
)

if TYPE_CHECKING:
    from app.reply_stream import Lanes, Reply, ReplyPlan

TOOL_CHOICE_MODES = ("auto", "none", "required")
DEFAULT_FILLER = "One moment."


@dataclass(frozen=True)
class ToolChoice:
    """`auto` (the model decides), `none` (never call), `required` (call one of the tools), or `function`
    with `name` (call that one) — the Realtime / OpenAI `tool_choice` values."""

    mode: str = "auto"
    name: str | None = None

    @classmethod
    def parse(cls, value: Any) -> ToolChoice:
        """"auto" | "none" | "required" | {"type": "function", "name": N} | a ToolChoice."""
        if isinstance(value, ToolChoice):
            return value
        if value is None:
            return cls()
        if isinstance(value, str) and value in TOOL_CHOICE_MODES:
            return cls(value)
        if isinstance(value, dict) and value.get("type", "function") == "function":
            name = value.get("name")
            if isinstance(name, str) and name:
                return cls("function", name)
        raise ValueError(
            f"tool_choice must be auto, none, required or {{'type': 'function', 'name': ...}}, got {value!r}"
        )

    def specs(self, registry: ToolRegistry) -> list[ToolSpec]:
        """The tools a call may use (all, or the named one); ValueError when the named one is missing."""
        if self.mode != "function":
            return registry.specs
        if self.name not in registry:
            raise ValueError(f"tool_choice names {self.name!r}, which is not a registered tool")
        return [registry.tool(self.name).spec]

    def wire(self) -> Any:
        return {"type": "function", "name": self.name} if self.mode == "function" else self.mode


@dataclass(frozen=True)
class ToolPlan:
    """What a reply may do with tools: the registry, the choice, and the slow-tool filler."""

    registry: ToolRegistry
    choice: ToolChoice = ToolChoice()
    call_threshold: float | None = None  # None: the prompt style's default (llm/tool_format.py call_policy)
    filler: str | None = DEFAULT_FILLER  # said when a server-side tool runs longer than filler_after_s
    filler_after_s: float = 0.7
    # How the call is written (llm/tool_format.py write_call), over the style's default:
    # {"name_choice": "greedy" | "likelihood" | "channel", "copy_spans": bool (free strings/integers
    # limited to the user's own words/numbers)}.
    call_options: dict[str, Any] = field(default_factory=dict)
    after_result: bool = False  # the reply answers a tool's output (a client-side tool's, just added)

    def policy(self, style: str) -> CallPolicy:
        return call_policy(style, any(name for name in self.registry.examples))

    def threshold(self, style: str) -> float | None:
        return self.call_threshold if self.call_threshold is not None else self.policy(style).threshold

    def decision(self, style: str) -> tuple[ToolChoice, float | None]:
        """(choice, threshold) for this reply. A calibrated threshold tells a request from a question in
        what the user says; after a tool's output under `auto`, the reply answers with it (a threshold
        that low would call again on the result itself)."""
        threshold = self.threshold(style)
        if self.after_result and threshold is not None and self.choice.mode == "auto":
            return ToolChoice("none"), threshold
        return self.choice, threshold

    def write_call_kwargs(self, user_text: str, style: str = "compact") -> dict[str, Any]:
        policy = self.policy(style)
        options = {"name_choice": policy.name_choice, "copy_spans": policy.copy_spans} | self.call_options
        unknown = set(options) - {"name_choice", "copy_spans"}
        if unknown:
            raise ValueError(f"unknown call option(s) {sorted(unknown)}: name_choice, copy_spans")
        kwargs: dict[str, Any] = {"name_choice": options["name_choice"]}
        if options["copy_spans"] and user_text:
            kwargs["spans_from"] = user_text
        if kwargs["name_choice"] == "channel":
            kwargs["utterance"] = user_text
            kwargs["examples"] = self.registry.examples or None
        return kwargs

    @property
    def active(self) -> bool:
        return len(self.registry) > 0 and self.choice.mode != "none"


def result_text(name: str, output: Any, tokenizer: Any) -> str:
    """How a tool's result reaches the model (as the next user turn). Qwen: its template's
    `<tool_response>` block. Compact (SmolLM2): one plain sentence — given the `<tool_response>` block the
    135M model mostly copies it or stops at once; told in words what the tool returned, it answers."""
    if style_for(tokenizer) == "qwen":
        return tool_response(output)
    body = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str)
    return f"The {name} tool returned: {body}. Answer my question with it, in one short sentence."


def decide_call(
    session: Any,
    choice: ToolChoice,
    sampling: SamplingParams,
    generator: torch.Generator | None = None,
    threshold: float | None = None,
    user_text: str | None = None,
) -> tuple[float, bool]:
    """(P(the reply starts a tool call), call?) at the start of the reply (opened here).

    `auto`: P >= `threshold` when a calibrated threshold is given (P taken as if `user_text` opened the
    conversation: the calibration's condition, `call_probability`), else the model's own choice of its
    first token under the reply's sampling (greedy: the argmax is the first token of `<tool_call>`).
    `required` / a named function: always; `none`: never."""
    session.append_reply([])
    logits = session.next_token_logits()
    first = session.tokenizer(CALL_OPEN, add_special_tokens=False)["input_ids"][0]
    p_call = float(torch.softmax(logits.float(), dim=-1)[first])
    if choice.mode in ("required", "function"):
        return p_call, True
    if choice.mode == "none":
        return p_call, False
    if threshold is not None:
        if user_text:
            p_call = call_probability(session, first_turn=user_text)
        return p_call, p_call >= threshold
    return p_call, choose(logits, sampling, generator) == first


def tools_system_prompt(base: str, registry: ToolRegistry, tokenizer: Any) -> str:
    """The system prompt with the tools (and their authors' worked examples, `ToolRegistry.add_examples`)."""
    return f"{base}\n\n{tools_prompt(registry.specs, style_for(tokenizer), registry.examples or None)}".strip()


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


# -- one Conversation reply's tool phase (app/reply_stream.py run_reply) ---------------------------------
async def tool_phase(
    reply: Reply, session: Any, lanes: Lanes, plan: ReplyPlan, sampling: Any, pieces: asyncio.Queue[str | None]
) -> bool:
    """Call or answer, and the call: returns whether an answer should be generated now.

    The decision and the call (constrained by the tools' schemas) are written by the model on the LLM
    lane. A preemptive reply stops there until the turn is confirmed: no tool runs for a turn that may
    not be over (if the user goes on, the call is dropped with the reply). A client-side tool ends the
    reply with the call. A server-side one runs with its timeout (a short filler is said when it is
    slow); a barge-in or cancel abandons it at once; its result or error joins the history and the answer
    follows."""
    tools = plan.tools
    assert tools is not None
    generator = getattr(session, "generator", None)
    reply.prepared = True  # the decision opens the reply in the session
    style = style_for(session.tokenizer)
    choice, threshold = tools.decision(style)
    user_text = reply.user_text or next(
        (m["content"] for m in reversed(session.history) if m["role"] == "user"), ""
    )
    p_call, call = await lanes.llm.run(decide_call, session, choice, sampling, generator, threshold, user_text)
    reply.numbers["p_call"] = round(p_call, 4)
    if not call or reply.cancelled:
        return not reply.cancelled
    options = tools.write_call_kwargs(user_text, style)
    try:  # arguments greedily, under the schema mask: the most likely well-formed call
        written = await lanes.llm.run(
            functools.partial(write_call, session, tools.choice.specs(tools.registry), GREEDY, None,
                              reply.cancel_event, **options)
        )  # fmt: skip
    except InterruptedError:
        reply.prepared = False  # write_call already dropped the unfinished reply
        return False
    reply.mark("tool_call")
    tool = tools.registry.tool(written.name)
    event = ToolCall(reply.id, new_call_id(), written.name, written.arguments,
                     json.dumps(written.arguments, ensure_ascii=False), tool.client_side)  # fmt: skip
    if not reply.confirmed:
        await reply.settled.wait()  # preemptive: confirmed (the turn is over) or cancelled (it was not)
        if reply.cancelled:
            return False
    reply.emit(event)
    if plan.on_call is not None:
        plan.on_call(event)
    if tool.client_side:
        return False  # the app runs it: add_tool_output() + respond() continue
    result = await _run_tool(reply, plan, written.name, written.arguments, pieces)
    if result is None:
        return False
    outcome, ms = result
    reply.mark("tool_result")
    reply.numbers["tool_ms"] = ms
    reply.emit(ToolResultEvent(reply.id, event.call_id, written.name, outcome.output, outcome.error, ms))

    def add_result() -> None:  # the result as a user turn, and the answer's turn opened, in one call
        session.extend(result_text(written.name, outcome.for_model(), session.tokenizer))
        session.end_user_turn()

    await lanes.llm.run(add_result)
    reply.tool_response_added = True
    return not reply.cancelled


async def _run_tool(
    reply: Reply, plan: ReplyPlan, name: str, arguments: dict[str, Any], pieces: asyncio.Queue[str | None]
) -> tuple[ToolResult, float] | None:
    """Run a server-side tool; (result, ms), or None when the reply was cancelled meanwhile."""
    tools = plan.tools
    assert tools is not None
    started = time.perf_counter()
    task = asyncio.ensure_future(tools.registry.call(name, arguments))
    cancelled = asyncio.ensure_future(reply.cancelled_signal.wait())
    try:
        waiting = {task, cancelled}
        filler_after = tools.filler_after_s if tools.filler and plan.speak else None
        done, _ = await asyncio.wait(waiting, timeout=filler_after,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if not done and not reply.cancelled and tools.filler and plan.speak:
            filler = tools.filler.strip() + " "
            reply.numbers["filler"] = 1.0
            reply.text += filler
            reply.emit(ReplyTextDelta(reply.id, filler))
            pieces.put_nowait(tools.filler.strip())
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if reply.cancelled:
            return None
        return task.result(), round(1000.0 * (time.perf_counter() - started), 1)
    finally:
        cancelled.cancel()
        if not task.done():
            task.cancel()  # an async tool stops here; a sync one's thread is abandoned (docs/tools.md)
