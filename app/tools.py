"""Tools for the Python API: typed Python functions become JSON-schema tools the model can call.

    tools = ToolRegistry()

    @tools.register
    def add_guest(event: str, name: str, rsvp: Literal["yes", "no", "maybe"] = "maybe", plus_ones: int = 0):
        '''Add a guest to an event.

        Args:
            event: the event's name
            name: the guest's name
        '''

    result = await tools.call("add_guest", {"event": "party", "name": "Maria"})   # ToolResult

The schema comes from the type hints (str, int, float, bool, Literal, Enum, list[...], X | None) and the
docstring (first paragraph: the description; Google-style `Args:` lines: the parameters'). Parameters
without a default are required. Sync functions run in a worker thread, async ones on the loop; each call
has a timeout. A failure (bad arguments, an exception, a timeout) is a `ToolResult` with `error` set, never
an exception: it goes back to the model as the result, so the conversation goes on.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import json
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from llm.tool_format import Example, ToolSpec

DEFAULT_TIMEOUT_S = 10.0
SPEECH_PROMPT_CHARS = 800  # Whisper reads at most ~220 prompt tokens (its streaming decoder here 100)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class ToolError(ValueError):
    """A function that cannot be a tool (an unsupported type hint, a bad name)."""


@dataclass(frozen=True)
class ToolResult:
    name: str
    output: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def for_model(self) -> Any:
        """What the model reads back: the output, or the error in words."""
        return self.output if self.ok else {"error": self.error}


@dataclass(frozen=True)
class Tool:
    spec: ToolSpec
    function: Callable[..., Any] | None  # None: a client-side tool (the app runs it and sends the output)
    timeout_s: float

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def client_side(self) -> bool:
        return self.function is None


class ToolRegistry:
    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._tools: dict[str, Tool] = {}
        self._examples: dict[str, list[Example]] = {}  # per tool: (what a user says, the call's arguments)
        self._sentences: list[str] = []  # what users say to these tools, for the speech recogniser
        self._word_sources: list[Callable[[], Iterable[str]]] = []  # names the data holds now

    def register(self, function: Callable[..., Any] | None = None, *, name: str | None = None,
                 timeout_s: float | None = None, free_text: Iterable[str] = ()):  # fmt: skip
        """Register a function (usable as `@register` or `@register(name=..., timeout_s=..., free_text=...)`).

        `free_text`: string parameters the model writes in its own words (a summary), where the others are
        copied from what the user said when calls copy spans (llm/tool_format.py `copy_spans`)."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            spec = spec_from_function(fn, name, tuple(free_text))
            if spec.name in self._tools:
                raise ToolError(f"a tool named {spec.name!r} is already registered")
            self._tools[spec.name] = Tool(spec, fn, timeout_s if timeout_s is not None else self.timeout_s)
            return fn

        return add(function) if function is not None else add

    def declare(self, name: str, description: str = "", parameters: dict[str, Any] | None = None) -> ToolSpec:
        """A client-side tool: only its spec is known here (as Realtime clients send them); a reply that
        calls it ends with the call, and the app answers with `Conversation.add_tool_output`. The
        parameters must be a JSON schema the constrained decoder supports (checked now, not mid-reply)."""
        if not _NAME.fullmatch(name):
            raise ToolError(f"tool name {name!r}: letters, digits and _ only (at most 64)")
        if name in self._tools:
            raise ToolError(f"a tool named {name!r} is already registered")
        parameters = parameters if parameters is not None else {"type": "object", "properties": {}}
        check_parameters(parameters, name)
        spec = ToolSpec(name, description or name.replace("_", " "), parameters)
        self._tools[name] = Tool(spec, None, self.timeout_s)
        return spec

    def add_examples(self, examples: dict[str, list[Example]]) -> None:
        """The tool author's worked examples, per tool name: (what a user says, the call's arguments).

        They go into the tool prompt (a small model copies a worked call better than it reads a listing),
        score the tool choice (`name_choice="channel"`) and prime the speech recogniser (`speech_prompt`).
        The key "" holds (user text, plain answer) pairs: turns that need no tool."""
        for name, shots in examples.items():
            if name and name not in self._tools:
                raise ToolError(f"examples for {name!r}, which is not registered")
            known = self._examples.setdefault(name, [])
            known += [shot for shot in shots if shot not in known]
        self.add_speech_hints(said for name, shots in examples.items() if name for said, _ in shots)

    @property
    def examples(self) -> dict[str, list[Example]]:
        return {name: list(shots) for name, shots in self._examples.items() if not name or name in self._tools}

    def add_speech_hints(
        self, sentences: Iterable[str] = (), words: Callable[[], Iterable[str]] | None = None
    ) -> None:
        """Tell the speech recogniser what users say to these tools: example `sentences` (the tool author's),
        and `words`, called each time a prompt is built, for the names the tools' data holds now (guests,
        events). Whisper spells names it was primed with far more often right ("Add Tom to the picnic"
        instead of "and time to the beginning"); see `speech_prompt`."""
        self._sentences += [s for s in sentences if s not in self._sentences]
        if words is not None:
            self._word_sources.append(words)

    def speech_prompt(self, max_chars: int = SPEECH_PROMPT_CHARS) -> str | None:
        """The text to prime the speech recogniser with (Whisper's `initial_prompt`), or None without hints.

        Example sentences first (every tool's first, then the second ...), then the known names; when too
        long, the last sentences are dropped first (a recogniser keeps the prompt's end). A failing word source is skipped: hints never break a turn."""
        words: list[str] = []
        for source in self._word_sources:
            try:
                words += [str(w).strip() for w in source() if str(w).strip()]
            except Exception:  # a hint is optional; the turn must not fail on it
                continue
        names = ", ".join(dict.fromkeys(words))
        names = names[-max_chars:].split(", ", 1)[-1] if len(names) > max_chars else names
        by_tool = [[said for said, _ in shots] for name, shots in self.examples.items() if name]
        ordered = [said for round_ in itertools.zip_longest(*by_tool) for said in round_ if said]
        sentences = list(dict.fromkeys(ordered + self._sentences))  # every tool's first example first
        while sentences and len(" ".join(sentences)) + len(names) + 2 > max_chars:
            sentences.pop()
        text = " ".join(sentences + ([names + "."] if names else []))
        return text or None

    def remove(self, name: str) -> None:
        """Unregister a tool (conversations already holding it keep their copy of the registry)."""
        if self._tools.pop(name, None) is None:
            raise KeyError(f"no tool named {name!r}")

    def merged(self, other: ToolRegistry | None) -> ToolRegistry:
        """A registry holding this one's tools and `other`'s (a name in both is refused)."""
        out = ToolRegistry(self.timeout_s)
        for registry in (self, other):
            for tool in (registry._tools.values() if registry is not None else ()):
                if tool.name in out._tools:
                    raise ToolError(f"a tool named {tool.name!r} is already registered")
                out._tools[tool.name] = tool
            if registry is not None:
                for name, shots in registry._examples.items():
                    out._examples.setdefault(name, []).extend(s for s in shots if s not in out._examples[name])
                out.add_speech_hints(registry._sentences)
                out._word_sources += [w for w in registry._word_sources if w not in out._word_sources]
        return out

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    def tool(self, name: str) -> Tool:
        return self._tools[name]

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    async def call(self, name: str, arguments: dict[str, Any] | str) -> ToolResult:
        """Run a tool; every failure becomes a ToolResult with `error` (see the module docstring)."""
        tool = self._tools.get(name)
        if tool is None:
            return ToolResult(name, error=f"unknown tool {name!r}; tools: {', '.join(self._tools) or 'none'}")
        if tool.function is None:
            return ToolResult(name, error=f"{name!r} is a client-side tool: the app runs it")
        try:
            if isinstance(arguments, str):
                arguments = json.loads(arguments or "{}")
            kwargs = _bind(tool, arguments)
        except (ValueError, TypeError) as exc:
            return ToolResult(name, error=f"bad arguments: {exc}")
        try:
            if inspect.iscoroutinefunction(tool.function):
                output = await asyncio.wait_for(tool.function(**kwargs), tool.timeout_s)
            else:  # a thread cannot be stopped: on a timeout its result is abandoned
                output = await asyncio.wait_for(asyncio.to_thread(tool.function, **kwargs), tool.timeout_s)
        except asyncio.TimeoutError:
            return ToolResult(name, error=f"timed out after {tool.timeout_s:g} s")
        except Exception as exc:  # the tool's own failure is reported to the model, not raised
            return ToolResult(name, error=f"{type(exc).__name__}: {exc}")
        return ToolResult(name, output=_jsonable(output))


def _bind(tool: Tool, arguments: Any) -> dict[str, Any]:
    if not isinstance(arguments, dict):
        raise ValueError("arguments must be a JSON object")
    props = tool.spec.parameters.get("properties", {})
    unknown = set(arguments) - set(props)
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}")
    missing = [n for n in tool.spec.parameters.get("required", []) if n not in arguments]
    if missing:
        raise ValueError(f"missing argument(s) {missing}")
    hints = typing.get_type_hints(tool.function)
    return {k: _convert(v, hints.get(k), props[k], k) for k, v in arguments.items()}


def _convert(value: Any, hint: Any, schema: dict[str, Any], where: str) -> Any:
    """Check a JSON value against its parameter's schema and give the function its declared type."""
    if "enum" in schema:
        if value not in schema["enum"]:
            raise ValueError(f"{where}: {value!r} is not one of {schema['enum']}")
        base = _strip_optional(hint)
        return base(value) if isinstance(base, type) and issubclass(base, enum.Enum) else value
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    checks = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "null": lambda v: v is None, "array": lambda v: isinstance(v, list)}  # fmt: skip
    if not any(checks.get(k, lambda v: False)(value) for k in kinds):
        raise ValueError(f"{where}: expected {'/'.join(map(str, kinds))}, got {type(value).__name__}")
    if isinstance(value, list):
        return [_convert(v, None, schema["items"], f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _jsonable(output: Any) -> Any:
    try:
        json.dumps(output)
        return output
    except (TypeError, ValueError):
        return str(output)


def check_parameters(parameters: Any, name: str) -> None:
    """A tool's parameters must be an object schema the constrained decoder supports (else ToolError)."""
    from llm.constrained import UnsupportedSchema, compile_schema

    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise ToolError(f"{name}: parameters must be a JSON schema of type object")
    try:
        compile_schema(parameters)
    except (UnsupportedSchema, TypeError, ValueError, KeyError) as exc:
        raise ToolError(f"{name}: unsupported parameters schema: {exc}") from None


# -- schema from a function --------------------------------------------------------------------------
def spec_from_function(fn: Callable[..., Any], name: str | None = None, free_text: tuple[str, ...] = ()) -> ToolSpec:
    name = name or fn.__name__
    if not _NAME.fullmatch(name):
        raise ToolError(f"tool name {name!r}: letters, digits and _ only (at most 64)")
    description, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolError(f"{name}: *args/**kwargs cannot be described to the model")
        if param.name not in hints:
            raise ToolError(f"{name}: parameter {param.name!r} needs a type hint")
        schema = _schema_for(hints[param.name], f"{name}.{param.name}")
        if param.name in arg_docs:
            schema["description"] = arg_docs[param.name]
        properties[param.name] = schema
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        elif param.default is not None and isinstance(param.default, (str, int, float, bool)):
            schema["default"] = param.default.value if isinstance(param.default, enum.Enum) else param.default
    unknown = set(free_text) - {n for n, s in properties.items() if s.get("type") == "string"}
    if unknown:
        raise ToolError(f"{name}: free_text names {sorted(unknown)}, which are not string parameters")
    parameters = {"type": "object", "properties": properties, "required": required,
                  "additionalProperties": False}  # fmt: skip
    return ToolSpec(name, description or name.replace("_", " "), parameters, free_text)


def _strip_optional(hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def _schema_for(hint: Any, where: str) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is str:
        return {"type": "string"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [m.value for m in hint]}
    if origin is list and len(args) == 1:
        return {"type": "array", "items": _schema_for(args[0], where)}
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = _schema_for(_strip_optional(hint), where)
        if "enum" in inner:
            return {"enum": [*inner["enum"], None]}
        return {**inner, "type": [inner["type"], "null"]}
    raise ToolError(
        f"{where}: unsupported type {hint!r} (str, int, float, bool, Literal, Enum, list, X | None)"
    )


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(first paragraph, {arg: description}) from a Google-style docstring."""
    paragraphs = doc.split("\n\n")
    description = (
        " ".join(paragraphs[0].split()) if paragraphs and not paragraphs[0].startswith("Args:") else ""
    )
    args: dict[str, str] = {}
    section = re.search(r"^Args:\s*\n((?:[ \t]+.*\n?)+)", doc, re.MULTILINE)
    if section:
        current = None
        for line in section.group(1).splitlines():
            match = re.match(r"\s+(\w+)(?:\s*\([^)]*\))?:\s*(.*)", line)
            if match and (current is None or len(line) - len(line.lstrip()) <= args.get("_indent", 99)):
                current = match.group(1)
                args[current] = match.group(2).strip()
                args["_indent"] = len(line) - len(line.lstrip())  # type: ignore[assignment]
            elif current and line.strip():
                args[current] += " " + line.strip()
        args.pop("_indent", None)
    return description, args
