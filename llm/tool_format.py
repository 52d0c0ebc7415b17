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
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from llm.constrained import Alt, Lit, Seq, compile_schema
from llm.sampling import GREEDY, SamplingParams
from llm.token_mask import ConstrainedDecoder, Vocabulary, choose_masked

CALL_OPEN = "<tool_call>\n"
CALL_CLOSE = "\n</tool_call>"
# No trailing space: the tokenizer writes ` "` as one token, so the space belongs to the name's first token
# (a lone " " token would be text the model has rarely seen before a JSON string).
NAME_PREFIX = '{"name":'
NAME_CHOICES = ("greedy", "likelihood", "channel")
Example = tuple[str, dict[str, Any]]  # (what the user says, the call's arguments)
# A turn that needs no tool, added to a compact prompt's examples when the tools' authors gave none: with
# only calls to copy, a small model starts a call after anything.
ANSWER_EXAMPLES: list[tuple[str, str]] = [("What is two plus two?", "Four.")]
# P(call) at which the compact format's default (SmolLM2-135M) calls a tool under tool_choice "auto":
# calibrated by `specvoice bench tools` on its dev commands only (docs/tools.md). SmolLM2 never puts a
# call's first token first on its own (P 1e-4 .. 3e-2), so its argmax would never call.
COMPACT_CALL_THRESHOLD = 3.4e-4  # bench tools dev calibration, 2026-12-03 (3.357e-4)


@dataclass(frozen=True)
class CallPolicy:
    """How a reply decides to call and writes the call, per prompt style (chosen by `bench tools`).

    threshold: P(call) needed under tool_choice "auto" (None: the reply's own first-token choice decides);
    name_choice: see `write_call`; copy_spans: free strings/integers are the user's own words/numbers."""

    threshold: float | None
    name_choice: str = "greedy"
    copy_spans: bool = False


MODELS_OWN = CallPolicy(None, "greedy", False)
CALL_POLICIES = {
    # The 135M default, with its tools' worked examples in the prompt (the format the threshold was
    # calibrated on): a calibrated decision, the tool under which the words are likeliest, spans.
    "compact": CallPolicy(COMPACT_CALL_THRESHOLD, "channel", True),
    # a model trained on its template's tool format (Qwen2.5) decides and writes calls itself
    "qwen": MODELS_OWN,
}


def call_policy(style: str, examples: bool) -> CallPolicy:
    """The default policy for a prompt style; without worked examples the compact prompt is the bare
    listing, where P(call) has another scale: the model's own first-token choice decides there."""
    return CALL_POLICIES[style] if examples or style != "compact" else MODELS_OWN


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    # String parameters the model writes in its own words even when calls copy the user's (`copy_spans`):
    # a summary, a message. Everything else that names what the user said is better as a span of it.
    free_text: tuple[str, ...] = ()


@dataclass(frozen=True)
class WrittenCall:
    name: str
    arguments: dict[str, Any]
    text: str  # the call as it stands in the history


def style_for(tokenizer: Any) -> str:
    """'qwen' when the chat template defines the <tool_call> format, else 'compact'."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "qwen" if "<tool_call>" in str(template) else "compact"


def tools_prompt(
    tools: list[ToolSpec], style: str, examples: dict[str, list[Example]] | None = None
) -> str:
    """The text appended to the system prompt that tells the model about the tools.

    `examples` (compact style): per tool name, (user text, arguments) pairs written out as calls in the
    exact syntax the call uses, a few-shot prompt that a small model copies more reliably than it follows
    a listing; under the key "", (user text, plain answer) pairs: turns that need no tool."""
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
    text = (
        "You can use these tools. To use one, reply with <tool_call> and a JSON object with the tool's "
        'name and arguments, like <tool_call>\n{"name": "tool_name", "arguments": {...}}\n</tool_call>. '
        "Otherwise just answer.\nTools:\n" + "\n".join(lines)
    )
    shots = [
        f"User: {said}\n{call_text(t.name, arguments)}"
        for t in tools
        for said, arguments in (examples or {}).get(t.name, [])
    ]
    answers = (examples or {}).get("") or (ANSWER_EXAMPLES if shots else [])
    shots += [f"User: {said}\n{answer}" for said, answer in answers]
    if shots:
        text += "\n\nExamples:\n" + "\n".join(shots)
    return text


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """A call as it stands in a reply (the same spelling `write_call` produces)."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False, separators=(", ", ": "))
    return CALL_OPEN + body + CALL_CLOSE


def _type_name(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    return "/".join(kind) if isinstance(kind, list) else str(kind)


MAX_SPAN_WORDS = 5
_EDGE_PUNCTUATION = ".,!?;:\"()[]"


def utterance_spans(text: str, max_words: int = MAX_SPAN_WORDS) -> list[str]:
    """Every run of 1..max_words words of `text`, punctuation trimmed at the edges, first seen first; a
    run ending in a possessive also without it ("Emma's" and "Emma": the honoree of "Emma's birthday")."""
    words = text.split()
    spans: dict[str, None] = {}
    for n in range(1, max_words + 1):
        for i in range(len(words) - n + 1):
            span = " ".join(words[i : i + n]).strip(_EDGE_PUNCTUATION + " ")
            if span and '"' not in span and "\\" not in span:
                spans.setdefault(span, None)
                owner = re.sub(r"['’]s$", "", span)
                if owner != span and owner:
                    spans.setdefault(owner, None)
    return list(spans)


_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}  # fmt: skip


def utterance_numbers(text: str) -> list[int]:
    """The whole numbers in `text` (digits, "4,172", or the words zero to twelve), first seen first."""
    found = [int(m.replace(",", "")) for m in re.findall(r"\d[\d,]*\d|\d", text)]
    found += [_NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in _NUMBER_WORDS]
    return list(dict.fromkeys(found))


def copy_spans(tools: list[ToolSpec], text: str) -> list[ToolSpec]:
    """The tools with every free string parameter (type string, no enum) limited to spans of `text`,
    and every free integer parameter to the numbers said in it; an optional parameter may also take its
    schema's `default` (none said: only that).

    For tools whose strings name things the user said (a guest, an event, a reason): the value is then a
    choice among the user's own words, made by the model under the mask, instead of free text a small
    model can run away with ("Friday_Dinner_Lisa_On_Lisa_On..."), and an optional value the user did not
    give stays at its default instead of a word picked to fill it ("dietary": "picnic"). The tool's
    `free_text` parameters, and a string with no span to offer, are left free."""
    spans = utterance_spans(text)
    if not spans:
        return tools
    numbers = utterance_numbers(text)
    out = []
    for tool in tools:
        props = tool.parameters.get("properties") or {}
        required = set(tool.parameters.get("required") or ())
        changed = {}
        for name, schema in props.items():
            if "enum" in schema or "const" in schema or name in tool.free_text:
                continue
            kind = schema.get("type")
            if kind == "string":
                low, high = schema.get("minLength", 0), schema.get("maxLength", 10**6)
                values: list[Any] = [s for s in spans if low <= len(s) <= high]
                drop = ("type", "minLength", "maxLength")
            elif kind == "integer":
                low, high = schema.get("minimum", -(10**15)), schema.get("maximum", 10**15)
                values = [n for n in numbers if low <= n <= high]
                drop = ("type", "minimum", "maximum")
            else:
                continue
            default = schema.get("default")
            if name not in required and default is not None and isinstance(default, str if kind == "string" else int):
                values = [default, *(v for v in values if v != default)]
            if values:
                changed[name] = {k: v for k, v in schema.items() if k not in drop} | {"enum": values}
        out.append(
            ToolSpec(tool.name, tool.description, {**tool.parameters, "properties": {**props, **changed}},
                     tool.free_text)  # fmt: skip
            if changed
            else tool
        )
    return out


def call_grammar(tools: list[ToolSpec], vocab: Vocabulary) -> Alt:
    """`"name", "arguments": {...}}`: the name chooses the argument schema (what follows NAME_PREFIX)."""
    if not tools:
        raise ValueError("no tools to call")
    heads = tuple(" " + json.dumps(t.name) + ', "arguments": ' for t in tools)
    bodies = tuple(Seq((compile_schema(t.parameters, vocab.writable), Lit(("}",)))) for t in tools)
    return Alt(heads, bodies)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def call_probability(session: Any, first_turn: str | None = None) -> float:
    """P(the reply starts a tool call), from the model's next-token distribution at the reply's start.

    Opens the reply (closing the user turn) if needed; read-only otherwise. With `first_turn` (the user's
    words): the probability as if they opened the conversation, the history left out. A small model's
    P(call) falls ~50x after one answered turn (it copies the conversation's pattern), so a threshold
    calibrated on single commands only holds where the history is left out; the system prompt's keys
    and values are computed once and kept (`_continuation_logits`)."""
    session.append_reply([])
    first = _ids(session.tokenizer, CALL_OPEN)[0]
    if first_turn is None:
        logits = session.next_token_logits()
    else:
        context, said = session.first_turn_tokens(first_turn)
        logits = _continuation_logits(session.model, context, said)[-1]
    return float(torch.softmax(logits.float(), dim=-1)[first])


def write_call(
    session: Any,
    tools: list[ToolSpec],
    sampling: SamplingParams = GREEDY,
    generator: torch.Generator | None = None,
    cancel: threading.Event | None = None,
    name_choice: str = "greedy",
    spans_from: str | None = None,
    name_prior: dict[str, float] | None = None,
    utterance: str | None = None,
    examples: dict[str, list[Example]] | None = None,
) -> WrittenCall:
    """Write one tool call as the reply (see the module docstring); it joins the history, closed.

    `name_choice`: "greedy" writes the name token by token under the mask like the arguments;
    "likelihood" scores every whole tool name by the model's own log-probability (one forward per tool)
    and writes the most likely, so names that share a first token ("who_...", "write_...") are told
    apart by the model rather than by the first token alone. `spans_from`: the user's words; free string
    arguments are then spans of them (`copy_spans`). `name_prior` ("likelihood" only): per tool name, a
    log-probability subtracted from its score — the same name's score after a content-free user turn
    (`name_log_likelihoods`), so a name the prompt favours whatever is said does not win by default
    (contextual calibration). "channel": the tool under which the user's `utterance` is most likely
    (`channel_scores`, with the tools' `examples`)."""
    if name_choice not in NAME_CHOICES:
        raise ValueError(f"name_choice must be one of {', '.join(NAME_CHOICES)}, got {name_choice!r}")
    vocab = Vocabulary.of(session.tokenizer)
    if spans_from:
        tools = copy_spans(tools, spans_from)
    session.append_reply(_ids(session.tokenizer, CALL_OPEN + NAME_PREFIX))
    if name_choice == "channel" and len(tools) > 1:
        if not utterance:
            raise ValueError('name_choice="channel" needs the utterance')
        scores = channel_scores(session, tools, utterance, examples)
        tools = [tools[max(range(len(tools)), key=scores.__getitem__)]]
    if name_choice == "likelihood" and len(tools) > 1:
        scores = _name_scores(session, tools)
        prior = name_prior or {}
        best = max(range(len(tools)), key=lambda i: scores[i] - prior.get(tools[i].name, 0.0))
        tools = [tools[best]]
    decoder = ConstrainedDecoder(call_grammar(tools, vocab), vocab)
    if len(tools) == 1:  # the head is fixed: force it in one go rather than one forward per token
        head = _ids(session.tokenizer, call_grammar(tools, vocab).heads[0])
        for token in head:
            decoder.advance(token)
        session.append_reply(head)
    while not decoder.done:
        if cancel is not None and cancel.is_set():
            session.discard_reply()
            raise InterruptedError("the tool call was cancelled")
        token = choose_masked(session.next_token_logits(), decoder.mask(), sampling, generator)
        decoder.advance(token)
        session.append_reply([token])
    call = json.loads(NAME_PREFIX + decoder.text)
    text = CALL_OPEN + NAME_PREFIX + decoder.text + CALL_CLOSE
    if spans_from:
        spec = next(t for t in tools if t.name == call["name"])
        arguments = drop_repeated_optionals(spec, call["arguments"])
        if arguments != call["arguments"]:  # the call joins the history as it will run
            call["arguments"], text = arguments, call_text(call["name"], arguments)
            session.discard_reply()
            session.append_reply(_ids(session.tokenizer, text))
            session.close_reply()
            return WrittenCall(call["name"], arguments, text)
    session.append_reply(_ids(session.tokenizer, CALL_CLOSE))
    session.close_reply()
    return WrittenCall(call["name"], call["arguments"], text)


def drop_repeated_optionals(tool: ToolSpec, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments without an optional string that repeats another argument's value.

    Under spans every string is a piece of the user's words, and the 135M model fills an optional one
    the user never gave with a piece already used ("dietary": "picnic" next to "event": "picnic"): the
    same words cannot be both, so the optional one is left out (its default applies)."""
    required = set(tool.parameters.get("required") or ())
    taken = {str(v).strip().lower() for k, v in arguments.items() if k in required and isinstance(v, str)}
    return {k: v for k, v in arguments.items()
            if k in required or not isinstance(v, str) or v.strip().lower() not in taken}  # fmt: skip


def name_log_likelihoods(session: Any, tools: list[ToolSpec]) -> dict[str, float]:
    """log P(tool name | the conversation, the call opened) for each tool; the history is left as it was
    (the open user turn stays open). For `write_call`'s `name_prior`: call it after a content-free
    user turn such as "N/A"."""
    session.append_reply(_ids(session.tokenizer, CALL_OPEN + NAME_PREFIX))
    try:
        scores = _name_scores(session, tools)
    finally:
        session.discard_reply()
    return {t.name: score for t, score in zip(tools, scores, strict=True)}


def channel_scores(
    session: Any, tools: list[ToolSpec], utterance: str, examples: dict[str, list[Example]] | None = None
) -> list[float]:
    """log P(utterance | a tool's description and examples) for each tool: the "noisy channel" direction.

    A small model's P(tool | utterance) leans on the prompt more than on what was said; asking instead how
    well each tool explains the utterance uses all of its words (Min et al., 2022, noisy channel prompting).
    One forward per tool over a short plain-text context of its own (a scratch cache, not the session's)."""
    model, tokenizer = session.model, session.tokenizer
    said = _ids(tokenizer, " " + utterance.strip() + '"')
    scores = []
    for tool in tools:
        shots = (examples or {}).get(tool.name, [])
        prefix = tool.description + "".join(f'\nA request of this kind: "{text}"' for text, _ in shots)
        context = _ids(tokenizer, prefix + "\nA request of this kind:")
        scores.append(_continuation_log_prob(model, context, said))
    return scores


_PREFIXES: OrderedDict[tuple[int, tuple[int, ...]], tuple[Any, torch.Tensor]] = OrderedDict()
_PREFIXES_LOCK = threading.Lock()
MAX_PREFIXES = 64  # tools' channel contexts and system prompts kept prefilled (a few MB each for the 135M)
SAID_ROOM = 192  # tokens of utterance a kept prefix has room for; longer ones get a scratch cache


def _continuation_log_prob(model: Any, context: list[int], said: list[int]) -> float:
    """log P(said | context) under `model` (`_continuation_logits`)."""
    logits = _continuation_logits(model, context, said[:-1], first=True)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(logp[torch.arange(len(said)), torch.tensor(said)].sum())


def _continuation_logits(model: Any, context: list[int], said: list[int], first: bool = False) -> torch.Tensor:
    """The logits after each token of `said` written after `context` ([len(said), V]; with `first`, also
    the logits after the context itself, first). A context (a tool's channel prompt, a system prompt) does
    not change between turns, so its keys and values are computed once and kept (the words are written
    after them, overwriting only their own slots): one forward over `said` instead of context + said."""
    key = (id(model), tuple(context))
    with _PREFIXES_LOCK, torch.no_grad():
        kept = _PREFIXES.get(key)
        if kept is None or len(said) > SAID_ROOM:
            cache = model.new_cache(len(context) + max(SAID_ROOM, len(said) + 1))
            after_context = model(torch.tensor(context), cache, 0)[-1]
            if len(said) <= SAID_ROOM:
                _PREFIXES[key] = kept = (cache, after_context)
                while len(_PREFIXES) > MAX_PREFIXES:
                    _PREFIXES.popitem(last=False)
        else:
            cache, after_context = kept
            _PREFIXES.move_to_end(key)
        logits = [after_context.unsqueeze(0)] if first else []
        if said:
            logits.append(model(torch.tensor(said), cache, len(context)))
        return torch.cat(logits)


def _name_scores(session: Any, tools: list[ToolSpec]) -> list[float]:
    """Sum of token log-probs of each ` "name",` after the reply so far (the closing quote counts too).

    Each candidate is one forward over its tokens at the positions past the conversation; those cache
    slots hold nothing the session relies on (it overwrites them with the next real tokens)."""
    first = torch.log_softmax(session.next_token_logits().float(), dim=-1)  # caches the whole conversation
    position = len(session.tokens())
    scores = []
    for tool in tools:
        ids = _ids(session.tokenizer, " " + json.dumps(tool.name) + ",")
        score = float(first[ids[0]])
        if len(ids) > 1:
            if position + len(ids) >= session.max_context:
                raise ValueError("no room in the context to score the tool names")
            with session._lock, torch.no_grad():
                logits = session.model(torch.tensor(ids[:-1]), session.cache, position)
            logp = torch.log_softmax(logits.float(), dim=-1)
            score += float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
        scores.append(score)
    return scores


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
