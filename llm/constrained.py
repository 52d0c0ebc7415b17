"""JSON schema -> grammar -> character automaton: the half of constrained decoding that knows no tokenizer.

Kept apart from the token mask (llm/token_mask.py, which imports this module) so that the grammar and the
automaton can be read, tested and reasoned about as plain text machinery, without torch or a vocabulary.

Two pieces:

* `compile_schema(schema) -> Node`: the schema as a small grammar of canonical JSON (`{"a": 1, "b": [2, 3]}`:
  keys in schema order, ", " and ": " separators, no other whitespace, no escapes in free strings). One
  canonical spelling per value keeps the model on text it knows and the automaton small. A keyword that
  cannot be enforced raises `UnsupportedSchema` rather than being silently ignored.
* A character automaton over that grammar (`initial_state`, `feed`, `feed_text`, `accepts`). Its state is
  an immutable stack of frames, so a state can be shared by many tokens of a vocabulary trie and used as a
  cache key.

Guarantees: every state keeps at least one character alive until the value is complete, and lengths are
bounded: strings by `maxLength` or `DEFAULT_MAX_STRING`, arrays by `maxItems` or `DEFAULT_MAX_ITEMS`,
numbers by `MAX_NUMBER_CHARS`; any text the automaton accepts is valid JSON accepted by the schema.

Masking changes the model's distribution on purpose, and only inside a call (docs/llm.md, "Constrained
decoding and the lossless claim").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_STRING = 200
DEFAULT_MAX_ITEMS = 16
MAX_NUMBER_CHARS = 16
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "format"}


class UnsupportedSchema(ValueError):
    """A schema (or keyword) that the constrained decoder cannot enforce."""


# -- grammar nodes (eq=False: hashed by identity, so states hash cheaply) --------------------------------
@dataclass(frozen=True, eq=False)
class Lit:
    choices: tuple[str, ...]  # exact texts, one of which is written


@dataclass(frozen=True, eq=False)
class Str:
    min_len: int
    max_len: int


@dataclass(frozen=True, eq=False)
class Num:
    integer: bool
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True, eq=False)
class Obj:
    keys: tuple[str, ...]  # the literal `"name": ` of each property, in order
    values: tuple[Any, ...]
    required: tuple[bool, ...]


@dataclass(frozen=True, eq=False)
class Arr:
    item: Any
    min_items: int
    max_items: int


@dataclass(frozen=True, eq=False)
class Union:
    branches: tuple[Any, ...]  # first characters are disjoint


@dataclass(frozen=True, eq=False)
class Seq:
    parts: tuple[Any, ...]


@dataclass(frozen=True, eq=False)
class Alt:
    """A literal head chooses the body that follows (a tool name chooses its arguments' schema)."""

    heads: tuple[str, ...]
    bodies: tuple[Any, ...]


Node = Lit | Str | Num | Obj | Arr | Union | Seq | Alt


def _json(value: Any, writable: Callable[[str], bool]) -> str:
    """Canonical JSON; a character the vocabulary cannot write as a whole token is escaped (\\uXXXX)."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if all(c < "\x80" or writable(c) for c in text):
        return text
    return "".join(c if c < "\x80" or writable(c) else json.dumps(c)[1:-1] for c in text)


def _ascii_only(c: str) -> bool:
    return c < "\x80"


def compile_schema(schema: dict[str, Any], writable: Callable[[str], bool] = _ascii_only) -> Node:
    """A JSON schema (the subset tool parameters use) -> grammar node. See the module docstring.

    `writable(c)`: whether literal text (keys, enum values) may contain character c as is; pass
    `Vocabulary.writable` (llm/token_mask.py) so that only characters some token spells on its own are
    used (others are escaped, which JSON allows), or the grammar could ask for a character no token can
    produce."""
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"a schema must be an object, got {type(schema).__name__}")
    if "enum" in schema or "const" in schema:
        values = [schema["const"]] if "const" in schema else list(schema["enum"])
        types = schema.get("type")
        if types is not None:
            types = [types] if isinstance(types, str) else list(types)
            values = [v for v in values if any(_is_type(v, t) for t in types)]
        if not values:
            raise UnsupportedSchema("enum/const has no value of the declared type")
        _check_keywords(schema, {"enum", "const", "type"})
        return Lit(tuple(dict.fromkeys(_json(v, writable) for v in values)))
    types = schema.get("type")
    if types is None:
        raise UnsupportedSchema("every schema needs a `type` (or `enum`/`const`)")
    if isinstance(types, list):
        if not types:
            raise UnsupportedSchema("empty type list")
        names = list(dict.fromkeys(types))
        if "integer" in names and "number" in names:
            names.remove("integer")  # a number already covers integers
        if len(names) == 1:
            return compile_schema({**schema, "type": names[0]}, writable)
        return Union(tuple(compile_schema(_only_keywords_of(schema, t), writable) for t in names))
    if types == "string":
        _check_keywords(schema, {"type", "minLength", "maxLength"})
        low, high = int(schema.get("minLength", 0)), int(schema.get("maxLength", DEFAULT_MAX_STRING))
        if not 0 <= low <= high:
            raise UnsupportedSchema(f"string lengths {low}..{high} are empty")
        return Str(low, high)
    if types in ("integer", "number"):
        _check_keywords(schema, {"type", "minimum", "maximum"})
        low, high = schema.get("minimum"), schema.get("maximum")
        if types == "number" and (low is not None or high is not None):
            raise UnsupportedSchema("minimum/maximum are supported on integers only")
        if low is not None and high is not None and low > high:
            raise UnsupportedSchema(f"integer range {low}..{high} is empty")
        for bound in (low, high):
            if bound is not None and (
                not isinstance(bound, int) or abs(bound) >= 10 ** (MAX_NUMBER_CHARS - 2)
            ):
                raise UnsupportedSchema(f"integer bound {bound!r} must be an integer of at most 14 digits")
        return Num(types == "integer", low, high)
    if types == "boolean":
        _check_keywords(schema, {"type"})
        return Lit(("true", "false"))
    if types == "null":
        _check_keywords(schema, {"type"})
        return Lit(("null",))
    if types == "object":
        _check_keywords(schema, {"type", "properties", "required", "additionalProperties"})
        props = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        if required - set(props):
            raise UnsupportedSchema(f"required properties without a schema: {sorted(required - set(props))}")
        return Obj(
            tuple(_json(name, writable) + ": " for name in props),
            tuple(compile_schema(sub, writable) for sub in props.values()),
            tuple(name in required for name in props),
        )
    if types == "array":
        _check_keywords(schema, {"type", "items", "minItems", "maxItems"})
        if not isinstance(schema.get("items"), dict):
            raise UnsupportedSchema("arrays need an `items` schema")
        low, high = int(schema.get("minItems", 0)), int(schema.get("maxItems", DEFAULT_MAX_ITEMS))
        if not 0 <= low <= high:
            raise UnsupportedSchema(f"array sizes {low}..{high} are empty")
        return Arr(compile_schema(schema["items"], writable), low, high)
    raise UnsupportedSchema(f"unsupported type {types!r}")


TYPE_KEYWORDS = {
    "string": {"minLength", "maxLength"},
    "integer": {"minimum", "maximum"},
    "number": {"minimum", "maximum"},
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems"},
}


def _only_keywords_of(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """One branch of a type list: JSON-schema keywords only constrain values of their own type."""
    others = set().union(*TYPE_KEYWORDS.values()) - TYPE_KEYWORDS.get(name, set())
    return {k: v for k, v in schema.items() if k not in others} | {"type": name}


def _check_keywords(schema: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(schema) - allowed - ANNOTATIONS
    if unknown:
        raise UnsupportedSchema(f"cannot enforce keyword(s) {sorted(unknown)}")


def _is_type(value: Any, name: str) -> bool:
    return {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
    }.get(name, lambda v: False)(value)


# -- the automaton ---------------------------------------------------------------------------------------
# A frame's feed(c) returns None (c is not allowed), (_PUSH, frames, consumed) to replace the frame by
# `frames` (itself updated, plus children), or (_DONE, result, consumed) when its value is complete.
# `consumed=False` hands c on to the next frame (a number ends at the first character that is not its own).
_PUSH, _DONE = 0, 1
_NUMBER_PREFIX = re.compile(r"-?(0|[1-9][0-9]*)?(\.[0-9]*)?")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


@dataclass(frozen=True, slots=True)
class ValueF:
    """Waiting for the first character of a value of `node`."""

    node: Any

    def feed(self, c: str):
        node = self.node
        if isinstance(node, Lit):
            return LitF(node.choices, 0).feed(c)
        if isinstance(node, Str):
            return (_PUSH, (StrF(node.min_len, node.max_len, 0),), True) if c == '"' else None
        if isinstance(node, Num):
            return NumF(node, "").feed(c)
        if isinstance(node, Obj):
            if c != "{":
                return None
            return _PUSH, (ObjF(node, 0, False, False), LitF(_object_choices(node, 0, False), 0)), True
        if isinstance(node, Arr):
            return (_PUSH, (ArrF(node, 0, 0),), True) if c == "[" else None
        if isinstance(node, Union):
            for branch in node.branches:
                step = ValueF(branch).feed(c)
                if step is not None:
                    return step
            return None
        if isinstance(node, Seq):
            return _PUSH, (SeqF(node, 0), ValueF(node.parts[0])), False
        if isinstance(node, Alt):
            return _PUSH, (AltF(node, -1), LitF(node.heads, 0)), False
        raise TypeError(f"unknown grammar node {node!r}")


@dataclass(frozen=True, slots=True)
class LitF:
    choices: tuple[str, ...]
    pos: int

    def feed(self, c: str):
        pos = self.pos
        alive = tuple(ch for ch in self.choices if len(ch) > pos and ch[pos] == c)
        if alive:
            if len(alive) == 1 and len(alive[0]) == pos + 1:
                return _DONE, alive[0], True
            return _PUSH, (LitF(alive, pos + 1),), True
        for ch in self.choices:  # a shorter choice is complete (enum 1 vs 12): hand c on
            if len(ch) == pos:
                return _DONE, ch, False
        return None


@dataclass(frozen=True, slots=True)
class StrF:
    min_len: int
    max_len: int
    n: int

    def feed(self, c: str):
        if c == '"':
            return (_DONE, None, True) if self.n >= self.min_len else None
        if c == "\\" or c < " " or self.n >= self.max_len:
            return None
        return _PUSH, (StrF(self.min_len, self.max_len, self.n + 1),), True


@dataclass(frozen=True, slots=True)
class NumF:
    node: Num
    text: str

    def feed(self, c: str):
        text = self.text + c
        if _number_prefix_ok(text, self.node):
            return _PUSH, (NumF(self.node, text),), True
        if _number_complete(self.text, self.node):
            return _DONE, self.text, False
        return None


def _number_prefix_ok(text: str, node: Num) -> bool:
    if len(text) > MAX_NUMBER_CHARS or _NUMBER_PREFIX.fullmatch(text) is None:
        return False
    if text.startswith("-0") and len(text) > 2 and text[2] != ".":
        return False
    if "." in text:
        if node.integer or text.startswith(".") or text.startswith("-."):
            return False
        if text.endswith(".") and len(text) >= MAX_NUMBER_CHARS:  # no room left for a fraction digit
            return False
        return True
    if not node.integer or (node.minimum is None and node.maximum is None):
        return True
    return _integer_feasible(text, node.minimum, node.maximum)


def _integer_feasible(text: str, low: int | None, high: int | None) -> bool:
    """Is there an integer in [low, high], at most MAX_NUMBER_CHARS long, whose decimal text starts so?"""
    low = -(10**MAX_NUMBER_CHARS) if low is None else low
    high = 10**MAX_NUMBER_CHARS if high is None else high
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    if not digits:  # "" or "-": any (negative) number of at most the allowed length
        return low <= high and (not negative or low <= -1)
    start = int(digits)
    room = MAX_NUMBER_CHARS - len(text)
    for k in range(0, 1 if digits == "0" else room + 1):
        a, b = start * 10**k, start * 10**k + 10**k - 1
        if negative:
            a, b = -b, -a
        if a <= high and b >= low:
            return True
    return False


def _number_complete(text: str, node: Num) -> bool:
    if _NUMBER.fullmatch(text) is None or (node.integer and "." in text):
        return False
    if node.integer:
        value = int(text)
        return (node.minimum is None or value >= node.minimum) and (
            node.maximum is None or value <= node.maximum
        )
    return True


def _object_choices(node: Obj, index: int, emitted: bool) -> tuple[str, ...]:
    """What may follow: a later key (up to and including the next required one), or `}` if none is due."""
    sep = ", " if emitted else ""
    choices = []
    for j in range(index, len(node.keys)):
        choices.append(sep + node.keys[j])
        if node.required[j]:
            return tuple(choices)
    return (*choices, "}")


@dataclass(frozen=True, slots=True)
class ObjF:
    node: Obj
    index: int  # the next property that may be written
    emitted: bool  # a property was written (the next one needs ", ")
    in_value: bool  # the child is a value (else: a key-or-close literal)

    def feed(self, c: str):  # never on top: children take every character
        return None

    def child_done(self, result: Any):
        node = self.node
        if self.in_value:
            choices = _object_choices(node, self.index, True)
            return (ObjF(node, self.index, True, False), LitF(choices, 0))
        if result == "}":
            return None
        key = result[2:] if self.emitted else result
        j = node.keys.index(key, self.index)
        return (ObjF(node, j + 1, True, True), ValueF(node.values[j]))


@dataclass(frozen=True, slots=True)
class ArrF:
    node: Arr
    count: int
    phase: int  # 0: after "[", 1: in an item, 2: after an item (", " or "]" literal child)

    def feed(self, c: str):  # phase 0 only: "]" or the first item
        node = self.node
        if c == "]" and node.min_items == 0:
            return _DONE, None, True
        if node.max_items == 0:
            return None
        return _PUSH, (ArrF(node, 0, 1), ValueF(node.item)), False

    def child_done(self, result: Any):
        node = self.node
        if self.phase == 1:
            count = self.count + 1
            choices = ((", ",) if count < node.max_items else ()) + (
                ("]",) if count >= node.min_items else ()
            )
            return (ArrF(node, count, 2), LitF(choices, 0))
        if result == "]":
            return None
        return (ArrF(node, self.count, 1), ValueF(node.item))


@dataclass(frozen=True, slots=True)
class SeqF:
    node: Seq
    index: int

    def feed(self, c: str):
        return None

    def child_done(self, result: Any):
        index = self.index + 1
        if index == len(self.node.parts):
            return None
        return (SeqF(self.node, index), ValueF(self.node.parts[index]))


@dataclass(frozen=True, slots=True)
class AltF:
    node: Alt
    branch: int  # -1 while the head is being written

    def feed(self, c: str):
        return None

    def child_done(self, result: Any):
        if self.branch >= 0:
            return None
        branch = self.node.heads.index(result)
        return (AltF(self.node, branch), ValueF(self.node.bodies[branch]))


State = tuple  # frames, bottom first; () = the value is complete


def initial_state(node: Node) -> State:
    return (ValueF(node),)


def feed(state: State, c: str) -> State | None:
    """The state after character c, or None if c is not allowed here."""
    while state:
        step = state[-1].feed(c)
        if step is None:
            return None
        kind, payload, consumed = step
        if kind == _PUSH:
            state = state[:-1] + payload
        else:
            state = state[:-1]
            result = payload
            while state:  # tell the parents, which may complete in turn
                replaced = state[-1].child_done(result)
                if replaced is not None:
                    state = state[:-1] + replaced
                    break
                state, result = state[:-1], None
        if consumed:
            return state
    return None  # the value is complete: nothing more may follow


def feed_text(state: State, text: str) -> State | None:
    for c in text:
        state = feed(state, c)
        if state is None:
            return None
    return state


def accepts(node: Node, text: str) -> bool:
    """Does the grammar produce exactly `text`? (tests, and checking a call written without a mask)"""
    state = feed_text(initial_state(node), text)
    while state:  # a number (or an enum value that another extends) at the very end is complete here
        top = state[-1]
        if isinstance(top, NumF) and _number_complete(top.text, top.node):
            result = top.text
        elif isinstance(top, LitF) and top.pos in (len(ch) for ch in top.choices):
            result = next(ch for ch in top.choices if len(ch) == top.pos)
        else:
            return False
        state = state[:-1]
        if state:
            replaced = state[-1].child_done(result)
            if replaced is not None:
                return False  # the parent expects more
    return state == ()
