"""Tools in a Conversation (docs/tools.md): registration, tool_choice, client-side outputs, the reply plan.

A mixin of `Conversation` (app/conversation.py owns the state), like `TurnsAndReplies`: the tools a reply
may call are the assistant's (shared, e.g. skills) plus this conversation's own. The system prompt lists
them, so changing them (or the instructions, `set_instructions`) rebuilds the LLM session with the same
history. The reply side (decide, call, run,
answer) is `app.tool_turn.tool_phase`, run by `app.reply_stream.run_reply` with the `ReplyPlan` made here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from app.reply_stream import Reply, ReplyPlan
from app.tool_turn import ToolChoice, ToolPlan, result_text, tools_system_prompt
from app.tools import ToolRegistry


class ConversationTools:
    """Methods of Conversation (see there for the other attributes)."""

    assistant: Any
    config: Any
    _session: Any
    _llm: Any
    _lanes: Any
    _user_prefix: str

    def _init_tools(self, tools: ToolRegistry | None, tool_choice: Any) -> None:
        self._tools = ToolRegistry().merged(getattr(self.assistant, "tools", None)).merged(tools)
        self._tool_choice = ToolChoice.parse(tool_choice)
        self._tool_choice.specs(self._tools)  # a named tool must exist
        self.call_threshold: float | None = None  # None: the prompt style's default (tool_format.CALL_POLICIES)
        self.filler: str | None = "One moment."  # said while a server-side tool is slow (None: silence)
        self.filler_after_s = 0.7
        self.call_options: dict[str, Any] = {}  # over the style's default: ToolPlan.call_options
        self.audio_output = True  # False: text-only replies, no speech synthesis at all
        self._pending_calls: dict[str, str] = {}  # client-side calls waiting for add_tool_output: id -> name
        self._tool_output_added = False  # the next reply answers a client tool's output (ToolPlan.after_result)
        self._reply_options: dict[str, dict[str, Any]] = {}  # per-reply overrides from respond()

    @property
    def tools(self) -> ToolRegistry:
        return self._tools

    @property
    def tool_choice(self) -> ToolChoice:
        return self._tool_choice

    async def set_tools(self, tools: ToolRegistry | None, tool_choice: Any = None) -> None:
        """Replace this conversation's own tools (the assistant's stay). The system prompt lists the tools,
        so a change rebuilds the LLM session with the same history (waits for a reply in progress)."""
        self._check_open()
        registry = ToolRegistry().merged(getattr(self.assistant, "tools", None)).merged(tools)
        choice = ToolChoice.parse(tool_choice) if tool_choice is not None else self._tool_choice
        choice.specs(registry)
        if registry.specs != self._tools.specs:
            prompt = self._system_prompt(registry)
            async with self._llm.lock:
                session = await self._lanes.llm.run(self._rebuilt_session, prompt)
                if len(registry):
                    check_tools_backend(session)
                self._session = self._llm.session = session
        self._tools, self._tool_choice = registry, choice

    async def set_instructions(self, system_prompt: str | None) -> None:
        """Replace the system prompt (None: the assistant's). It is the KV cache's prefix, so a change
        rebuilds the LLM session with the same history (waits for a reply in progress)."""
        self._check_open()
        before = self._system_prompt(self._tools)
        self.config = dataclasses.replace(self.config, system_prompt=system_prompt)
        prompt = self._system_prompt(self._tools)
        if prompt == before:
            return
        async with self._llm.lock:
            self._session = self._llm.session = await self._lanes.llm.run(self._rebuilt_session, prompt)

    def set_tool_choice(self, tool_choice: Any) -> None:
        choice = ToolChoice.parse(tool_choice)
        choice.specs(self._tools)
        self._tool_choice = choice

    async def add_tool_output(self, call_id: str, output: Any, respond: bool = False) -> None:
        """The result of a client-side tool call (a `ToolCall` with `client_side`): it joins the history
        as the tool's response; `respond()` (or respond=True) lets the model answer with it."""
        self._check_open()
        name = self._pending_calls.pop(call_id, None)
        if name is None:
            raise ValueError(f"no tool call {call_id!r} is waiting for its output")
        self._interrupt_live()
        text = result_text(name, output, self.assistant.llm.tokenizer)
        self._user_prefix = f"{self._user_prefix} {text}".strip()
        self._tool_output_added = True
        if respond:
            await self.respond()
        else:
            self._llm.feed(self._user_prefix)

    def _on_tool_call(self, call: Any) -> None:
        if call.client_side:
            self._pending_calls[call.call_id] = call.name
            while len(self._pending_calls) > 32:
                self._pending_calls.pop(next(iter(self._pending_calls)))

    def _reply_plan(self, reply: Reply) -> ReplyPlan:
        """How `reply` runs: spoken or text only, with which tools (conversation_turns._run)."""
        options = self._reply_options.pop(reply.id, {})
        tools = None
        if len(self._tools):
            choice = options.get("tool_choice", self._tool_choice)
            tools = ToolPlan(self._tools, choice, self.call_threshold, self.filler, self.filler_after_s,
                             dict(self.call_options), after_result=self._tool_output_added)  # fmt: skip
        self._tool_output_added = False
        return ReplyPlan(options.get("audio", self.audio_output), tools, self._on_tool_call)

    def _system_prompt(self, registry: ToolRegistry) -> str:
        base = self.config.system_prompt or self.assistant.config.llm.system_prompt
        if not len(registry):
            return base
        return tools_system_prompt(base, registry, self.assistant.llm.tokenizer)

    def _rebuilt_session(self, system_prompt: str) -> Any:
        """A new LLM session with `system_prompt` and this one's history (LLM lane)."""
        session = self.assistant.llm.session(system_prompt=system_prompt)
        messages = self._session.history[1:]
        while messages and messages[0]["role"] != "user":
            messages.pop(0)
        for i in range(0, len(messages), 2):
            user = messages[i]["content"]
            if i + 1 < len(messages):
                session.add_turn(user, messages[i + 1]["content"])
            elif user.strip():
                session.revise(user)
        return session


def check_tools_backend(session: Any) -> None:
    if not hasattr(session, "next_token_logits"):
        raise ValueError("tools need the local LLM backend (llm.backend = 'local'): calls are decoded "
                         "under a schema mask over the model's own logits")
