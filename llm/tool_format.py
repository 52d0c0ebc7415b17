"""How tools are put in the prompt, how the model decides to call one, and how the call is written.

Format. Qwen2.5's chat template has a tool format ("# Tools ... <tools></tools> ... <tool_call>{"name": ...,
"arguments": ...}</tool_call>", results as `<tool_response>` in a user turn); when the tokenizer's template
mentions `<tool_call>` that text is used as the template writes it. SmolLM2's template has none, so it gets a
compact listing (one line per tool, `name(arg: type, ...): description`) and the same call syntax, which a
135M model follows more easily than full JSON schemas.

Decision. Whether to call is the model's: at the start of the reply, the probability it gives to the first
token of `<tool_call>` (`call_probability`). A caller compares it with a threshold (calibrated on a
development set, never on the benchmark's test set); no keyword rule is involved.

Call. `write_call` forces the fixed text (`<tool_call>\n{"name": `), then decodes the rest with the token
mask of llm/token_mask.py over a grammar (llm/constrained.py) where the tool name (an enum of the
registered names) selects that tool's argument schema, then forces the closing `}\n</tool_call>`. The
arguments therefore always parse and match the schema; the name and every argument value are still the
model's choices.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from llm.constrained import Alt, Lit, Seq, compile_schema
from llm.sampling import GREEDY, SamplingParams
from llm.token_mask import ConstrainedDecoder, Vocabulary, choose_masked

CALL_OPEN = "<tool_call>\n"
CALL_CLOSE = "\n</tool_call>"
NAME_PREFIX = '{"name": '


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class WrittenCall:
    name: str
    arguments: dict[str, Any]
    text: str  # the call as it stands in the history


def style_for(tokenizer: Any) -> str:
    """'qwen' when the chat template defines the <tool_call> format, else 'compact'."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "qwen" if "<tool_call>" in str(template) else "compact"


def tools_prompt(tools: list[ToolSpec], style: str) -> str:
    """The text appended to the system prompt that tells the model about the tools."""
    if style == "qwen":
        listing = "\n".join(
            json.dumps(
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
            )  # fmt: skip
            for t in tools
        )
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            f"{listing}\n</tools>\n\nFor each function call, return a json object with function name and "
            "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )
    lines = []
    for t in tools:
        props = t.parameters.get("properties") or {}
        args = ", ".join(f"{name}: {_type_name(schema)}" for name, schema in props.items())
        lines.append(f"- {t.name}({args}): {t.description}")
    return (
        "You can use these tools. To use one, reply with <tool_call> and a JSON object with the tool's "
        'name and arguments, like <tool_call>\n{"name": "tool_name", "arguments": {...}}\n</tool_call>. '
        "Otherwise just answer.\nTools:\n" + "\n".join(lines)
    )


def _type_name(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    return "/".join(kind) if isinstance(kind, list) else str(kind)


def call_grammar(tools: list[ToolSpec], vocab: Vocabulary) -> Alt:
    """`"name", "arguments": {...}}`: the name chooses the argument schema (what follows NAME_PREFIX)."""
    if not tools:
        raise ValueError("no tools to call")
    heads = tuple(json.dumps(t.name) + ', "arguments": ' for t in tools)
    bodies = tuple(Seq((compile_schema(t.parameters, vocab.writable), Lit(("}",)))) for t in tools)
    return Alt(heads, bodies)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def call_probability(session: Any) -> float:
    """P(the reply starts a tool call), from the model's next-token distribution at the reply's start.

    Opens the reply (closing the user turn) if needed; read-only otherwise."""
    session.append_reply([])
    logits = session.next_token_logits()
    first = _ids(session.tokenizer, CALL_OPEN)[0]
    return float(torch.softmax(logits.float(), dim=-1)[first])


def write_call(
    session: Any,
    tools: list[ToolSpec],
    sampling: SamplingParams = GREEDY,
    generator: torch.Generator | None = None,
    cancel: threading.Event | None = None,
) -> WrittenCall:
    """Write one tool call as the reply (see the module docstring); it joins the history, closed."""
    vocab = Vocabulary.of(session.tokenizer)
    decoder = ConstrainedDecoder(call_grammar(tools, vocab), vocab)
    session.append_reply(_ids(session.tokenizer, CALL_OPEN + NAME_PREFIX))
    while not decoder.done:
        if cancel is not None and cancel.is_set():
            session.discard_reply()
            raise InterruptedError("the tool call was cancelled")
        token = choose_masked(session.next_token_logits(), decoder.mask(), sampling, generator)
        decoder.advance(token)
        session.append_reply([token])
    session.append_reply(_ids(session.tokenizer, CALL_CLOSE))
    session.close_reply()
    call = json.loads(NAME_PREFIX + decoder.text)
    return WrittenCall(call["name"], call["arguments"], CALL_OPEN + NAME_PREFIX + decoder.text + CALL_CLOSE)


def parse_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """A call in a reply written without the mask (e.g. by a client): (name, arguments) or None."""
    start = text.find("<tool_call>")
    if start < 0:
        return None
    body = text[start + len("<tool_call>") :].split("</tool_call>")[0].strip()
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments") or {}
    return (call["name"], arguments) if isinstance(arguments, dict) else None


def tool_response(output: Any) -> str:
    """A tool's result as the user-turn text the model reads next (the Qwen template's wrapper)."""
    body = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str)
    return f"<tool_response>\n{body}\n</tool_response>"
