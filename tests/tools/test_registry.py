"""The tool registry: schemas from typed functions, sync/async calls, timeouts and errors as results."""

from __future__ import annotations

import asyncio
import enum
import threading
from typing import Literal

import jsonschema
import pytest

from app.tools import ToolError, ToolRegistry
from llm.constrained import compile_schema


class Diet(enum.Enum):
    NONE = "none"
    VEGETARIAN = "vegetarian"


def build() -> tuple[ToolRegistry, threading.Event]:
    tools = ToolRegistry(timeout_s=5)
    release = threading.Event()

    @tools.register
    def add_guest(event: str, name: str, rsvp: Literal["yes", "no", "maybe"] = "maybe", plus_ones: int = 0,
                  diet: Diet | None = None, tags: list[str] | None = None) -> dict:  # fmt: skip
        """Add a guest to an event.

        Args:
            event: the event's name
            name: the guest's name,
                as they said it
            plus_ones: how many people they bring
        """
        return {
            "event": event,
            "name": name,
            "rsvp": rsvp,
            "plus_ones": plus_ones,
            "diet": diet and diet.value,
        }

    @tools.register(name="lookup", timeout_s=0.2)
    async def lookup_order(order_id: int) -> str:
        """Find an order."""
        if order_id < 0:
            raise LookupError("no such order")
        if order_id == 0:
            await asyncio.Event().wait()  # never finishes: the timeout must end it
        return f"order {order_id}: shipped"

    @tools.register(timeout_s=0.2)
    def stuck() -> str:
        """A sync tool that blocks until released (the timeout must not wait for it)."""
        release.wait(10)
        return "late"

    return tools, release


def test_schema_from_hints_and_docstring():
    tools, _ = build()
    spec = {s.name: s for s in tools.specs}["add_guest"]
    params = spec.parameters
    assert spec.description == "Add a guest to an event."
    assert params["required"] == ["event", "name"]
    assert params["properties"]["rsvp"] == {"enum": ["yes", "no", "maybe"], "default": "maybe"}
    assert params["properties"]["plus_ones"] == {
        "type": "integer",
        "description": "how many people they bring",
        "default": 0,
    }
    assert params["properties"]["name"]["description"] == "the guest's name, as they said it"
    assert params["properties"]["diet"] == {"enum": ["none", "vegetarian", None]}
    assert params["properties"]["tags"] == {"type": ["array", "null"], "items": {"type": "string"}}
    jsonschema.Draft202012Validator.check_schema(params)
    for s in tools.specs:  # every generated schema can be enforced by the constrained decoder
        compile_schema(s.parameters)


def test_free_text_parameters_are_named_on_the_spec_and_must_be_strings():
    tools = ToolRegistry()

    @tools.register(free_text=("summary",))
    def end_call(summary: str, code: int = 0) -> str:
        """End the call."""
        return summary

    assert tools.tool("end_call").spec.free_text == ("summary",)
    with pytest.raises(ToolError, match="not string parameters"):
        tools.register(end_call, name="again", free_text=("code",))


async def test_sync_and_async_calls_results_and_errors():
    tools, release = build()
    ok = await tools.call("add_guest", {"event": "party", "name": "Maria", "diet": "vegetarian"})
    assert ok.ok and ok.output == {"event": "party", "name": "Maria", "rsvp": "maybe", "plus_ones": 0,
                                   "diet": "vegetarian"}  # fmt: skip
    assert (await tools.call("lookup", '{"order_id": 7}')).output == "order 7: shipped"
    failed = await tools.call("lookup", {"order_id": -1})
    assert not failed.ok and "LookupError: no such order" in failed.error
    assert failed.for_model() == {"error": failed.error}
    assert "timed out" in (await tools.call("lookup", {"order_id": 0})).error
    assert "timed out" in (await tools.call("stuck", {})).error
    release.set()
    assert "missing" in (await tools.call("add_guest", {"event": "x"})).error
    assert "unknown argument" in (await tools.call("add_guest", {"event": "x", "name": "y", "age": 3})).error
    assert (
        "not one of" in (await tools.call("add_guest", {"event": "x", "name": "y", "rsvp": "perhaps"})).error
    )
    assert "expected integer" in (await tools.call("lookup", {"order_id": "7"})).error
    assert "unknown tool" in (await tools.call("nope", {})).error


def test_functions_that_cannot_be_tools():
    tools = ToolRegistry()
    with pytest.raises(ToolError, match="type hint"):
        tools.register(lambda x: x, name="echo")
    with pytest.raises(ToolError, match="unsupported type"):

        @tools.register
        def f(x: dict) -> None: ...


def test_examples_and_speech_hints_follow_the_data_and_survive_a_merge():
    """The tool author's examples and the names its data holds prime the speech recogniser: every tool's first
    example before any second one, names last (a recogniser keeps a long prompt's end), names read again
    each time; a failing names source is skipped."""
    tools, _ = build()
    assert tools.speech_prompt() is None
    tools.add_examples({"add_guest": [("Add Olivia to the brunch.", {"event": "brunch", "name": "Olivia"}),
                                      ("Invite Henry.", {"event": "party", "name": "Henry"})],
                        "lookup": [("Where is order 12?", {"order_id": 12})]})  # fmt: skip
    with pytest.raises(ToolError):
        tools.add_examples({"nope": [("x", {})]})
    guests = ["Maria"]
    tools.add_speech_hints(words=lambda: guests)
    tools.add_speech_hints(words=lambda: 1 / 0)
    prompt = tools.speech_prompt()
    assert prompt == "Add Olivia to the brunch. Where is order 12? Invite Henry. Maria."
    guests.append("Sam")
    merged = ToolRegistry().merged(tools)
    assert merged.speech_prompt().endswith("Maria, Sam.") and merged.examples == tools.examples
    short = tools.speech_prompt(max_chars=40)
    assert short.endswith("Maria, Sam.") and "Invite Henry" not in short and len(short) <= 40
