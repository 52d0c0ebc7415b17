"""Tools in the Conversation API with the real default models (SmolLM2-135M, Whisper tiny.en, Piper joe).

Most tests here are about the call path and ask for a call with `tool_choice` ("required" or a named
function), as a Realtime client may; the arguments, the tool's name among several and the answer are still
the model's. The `auto` decision (the compact style's calibrated threshold, llm/tool_format.py
CALL_POLICIES) is checked on a command and a question far from the threshold on both sides.
"""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from conv_helpers import Driver, check_event_order, silence

from app.config import ConversationConfig
from app.tools import ToolRegistry
from app.turn_state import TurnState

pytestmark = pytest.mark.slow


def config(**changes) -> ConversationConfig:
    base = dict(max_reply_tokens=24, output_sample_rate=24000)
    base.update(changes)
    return ConversationConfig(**base)


def weather_tools(release: asyncio.Event | None = None, seen: list | None = None) -> ToolRegistry:
    """get_weather (server-side; waits for `release` when given: a slow tool the test controls) and
    get_time (declared only: client-side)."""
    tools = ToolRegistry(timeout_s=60)

    @tools.register
    async def get_weather(city: str) -> dict:
        """Get the current weather in a city.

        Args:
            city: the city's name
        """
        if seen is not None:
            seen.append(city)
        if release is not None:
            await release.wait()
        return {"city": city, "sky": "sunny", "temperature_c": 21}

    tools.declare("get_time", "Get the current time in a city.",
                  {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})  # fmt: skip
    return tools


async def test_a_slow_server_side_tool_gets_a_filler_then_its_result_is_spoken(assistant):
    release = asyncio.Event()
    tools = weather_tools(release)
    conv = assistant.conversation(config(), tools=tools)
    driver = Driver(conv)
    await conv.send_text("What is the weather in Paris?", respond=False)
    await conv.respond(tool_choice="required")
    call = await driver.wait_for(lambda e: e.type == "tool_call", "tool_call")
    assert call.name == "get_weather" and not call.client_side  # the model's pick of the two tools
    jsonschema.validate(json.loads(call.arguments_json), tools.tool("get_weather").spec.parameters)
    assert call.arguments == json.loads(call.arguments_json) and "paris" in call.arguments["city"].lower()
    # The tool is still running (it waits for us): the filler is said meanwhile.
    filler = await driver.wait_for(lambda e: e.type == "reply_audio", "filler audio")
    assert not driver.of_type("tool_result")
    release.set()
    result = await driver.wait_for(lambda e: e.type == "tool_result", "tool_result")
    assert result.call_id == call.call_id and result.error is None and result.output["sky"] == "sunny"
    done = await driver.wait_for(lambda e: e.type == "reply_done", "reply_done")
    metrics = await driver.wait_for(lambda e: e.type == "metrics", "metrics")
    await driver.close()

    check_event_order(driver.events, output_rate=24000)
    kinds = [e.type for e in driver.events]
    assert kinds.index("tool_call") < driver.events.index(filler) < kinds.index("tool_result")
    assert done.text.startswith("One moment.")
    answer = done.text.removeprefix("One moment.").lower()
    assert "sunny" in answer, done.text  # the answer uses the tool's result
    after_result = driver.events[kinds.index("tool_result") :]
    assert any(e.type == "reply_audio" for e in after_result)  # ... and is spoken
    assert metrics.timings_ms["filler"] == 1.0 and metrics.timings_ms["tool_ms"] > 0
    roles = [m["role"] for m in conv.session.history]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert "<tool_call>" in conv.session.history[2]["content"] and "sunny" in conv.session.history[3]["content"]


async def test_barge_in_while_a_tool_runs_cancels_the_turn_and_the_next_question_is_answered(
    assistant, other_voice
):
    release = asyncio.Event()  # never set: the tool would run until its timeout
    started, cancelled = asyncio.Event(), asyncio.Event()
    tools = ToolRegistry(timeout_s=60)

    @tools.register
    async def book_table(restaurant: str, people: int) -> str:
        """Book a table at a restaurant."""
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "booked"

    conv = assistant.conversation(config(echo_policy="full_duplex"), tools=tools, tool_choice="required")
    driver = Driver(conv)
    await conv.send_text("Book a table for two at Luigi's.")
    await driver.wait_for(lambda e: e.type == "reply_audio", "filler audio")
    assert started.is_set()
    conv.set_tool_choice("none")  # the next question is answered in words
    await driver.push(other_voice("What is the capital of France?"))
    await driver.push(silence(1500))
    interrupted = await driver.wait_for(lambda e: e.type == "interrupted", "interrupted")
    await asyncio.wait_for(cancelled.wait(), 30)  # the tool was stopped, not left running
    assert not driver.of_type("tool_result")
    answer = await driver.wait_for(lambda e: e.type == "reply_done" and e.reply_id != interrupted.reply_id,
                                   "the next reply")  # fmt: skip
    await driver.close()
    check_event_order(driver.events, output_rate=24000)
    assert not driver.of_type("error")
    assert answer.text.strip()
    assert "the capital of france" in conv.session.history[-2]["content"].lower()


async def test_client_side_tool_ends_the_reply_then_add_tool_output_continues_text_only(assistant, monkeypatch):
    synthesised: list[str] = []
    real = assistant.voice.synthesize
    monkeypatch.setattr(assistant.voice, "synthesize", lambda text: synthesised.append(text) or real(text))
    conv = assistant.conversation(config(), tools=weather_tools())
    conv.audio_output = False
    driver = Driver(conv)
    # Which of the two tools: the model's likelihood of each whole name; the city: a span of the user's words.
    conv.call_options = {"name_choice": "likelihood", "copy_spans": True}
    await conv.send_text("What time is it in Tokyo?", respond=False)
    await conv.respond(tool_choice="required")
    call = await driver.wait_for(lambda e: e.type == "tool_call", "tool_call")
    first = await driver.wait_for(lambda e: e.type == "reply_done", "reply_done")
    assert call.client_side and call.name == "get_time" and call.arguments["city"].lower() == "tokyo"
    assert first.text == "" and not driver.of_type("tool_result")
    with pytest.raises(ValueError, match="no tool call"):
        await conv.add_tool_output("call_unknown", "{}")
    await conv.add_tool_output(call.call_id, json.dumps({"time": "10:42"}))
    with pytest.raises(ValueError):  # answered once only
        await conv.add_tool_output(call.call_id, "{}")
    await conv.respond()
    second = await driver.wait_for(lambda e: e.type == "reply_done" and e.reply_id != first.reply_id, "answer")
    # The model's own decision for a greeting: answer, not call.
    await conv.send_text("Say hello.")
    hello = await driver.wait_for(lambda e: e.type == "reply_done" and e.reply_id not in
                                  (first.reply_id, second.reply_id), "hello")  # fmt: skip
    await driver.close()
    assert "10:42" in second.text, second.text
    assert hello.text.strip() and len(driver.of_type("tool_call")) == 1
    assert not driver.of_type("reply_audio") and synthesised == []  # text only: Piper never ran


async def test_a_preemptive_reply_writes_its_call_but_runs_the_tool_only_once_the_turn_is_over(
    assistant, other_voice
):
    seen: list[str] = []
    states: list[TurnState | None] = []
    conv_ref: list = []
    tools = ToolRegistry(timeout_s=60)

    @tools.register
    def get_weather(city: str) -> dict:
        """Get the current weather in a city."""
        states.append(conv_ref[0].turn_state)
        seen.append(city)
        return {"city": city, "sky": "sunny"}

    # A long fixed endpoint: the preemptive reply (started at the first 64 ms of silence) writes its call
    # while the turn is still open; the turn ends only when the test pushes the rest of the silence.
    conv = assistant.conversation(
        config(endpointing="fixed", hangover_ms=1500, max_silence_ms=1500), tools=tools, tool_choice="required"
    )
    conv_ref.append(conv)
    loop = asyncio.get_running_loop()
    call_written = asyncio.Event()
    close_reply = conv.session.close_reply

    def spy_close_reply() -> None:  # write_call closes the reply once the whole call is written
        close_reply()
        loop.call_soon_threadsafe(call_written.set)

    conv.session.close_reply = spy_close_reply
    driver = Driver(conv)
    await driver.push(silence(300))
    await driver.push(other_voice("What is the weather in Paris?"))
    await driver.push(silence(300))
    await asyncio.wait_for(call_written.wait(), 180)
    assert conv.turn_state is TurnState.PAUSED and seen == []  # written, held: nothing ran yet
    await driver.push(silence(1500))
    metrics = await driver.wait_for(lambda e: e.type == "metrics", "metrics")
    await driver.close()
    check_event_order(driver.events, output_rate=24000)
    assert metrics.timings_ms["preemptive"] == 1.0
    assert len(seen) == 1 and "paris" in seen[0].lower()
    assert states == [TurnState.FINAL]  # it ran after the turn was confirmed
    assert len(driver.of_type("tool_call")) == 1 and len(driver.of_type("tool_result")) == 1


async def test_set_tools_mid_conversation_keeps_the_history(assistant):
    conv = assistant.conversation(config())
    conv.audio_output = False
    driver = Driver(conv)
    await conv.send_text("Say hello.")
    await driver.wait_for(lambda e: e.type == "reply_done", "reply_done")
    before = conv.session.history
    await conv.set_tools(weather_tools())
    listed = conv.session.history
    assert listed[1:] == before[1:] and "get_weather(" in listed[0]["content"]
    assert "get_weather" not in before[0]["content"]
    await conv.send_text("What is the weather in Rome?", respond=False)
    await conv.respond(tool_choice={"type": "function", "name": "get_weather"})
    result = await driver.wait_for(lambda e: e.type == "tool_result", "tool_result")
    await driver.wait_for(lambda e: e.type == "reply_done" and e.reply_id == result.reply_id, "answer")
    assert result.output["city"].lower() == "rome"
    await conv.set_tools(None)
    assert conv.session.history[0]["content"] == before[0]["content"] and not len(conv.tools)
    assert conv.session.history[1:3] == before[1:3] and len(conv.session.history) == 7
    with pytest.raises(ValueError):
        conv.set_tool_choice({"type": "function", "name": "get_weather"})  # no such tool any more
    await driver.close()


async def test_under_auto_the_default_policy_calls_for_a_command_and_answers_a_question(assistant, tmp_path):
    """No tool_choice forcing: the compact style's calibrated P(call) threshold decides (the argmax alone
    never calls with SmolLM2), the channel score picks the tool, spans fill it and the unsaid optional
    values keep their defaults; the row lands in the skill's database."""
    from app.skills.events import register_event_tools
    from app.skills.events_db import EventStore

    store = EventStore(tmp_path / "events.db")
    store.add_guest("picnic", "Emma")
    conv = assistant.conversation(config(), tools=register_event_tools(ToolRegistry(), store))
    conv.audio_output = False
    driver = Driver(conv)
    await conv.send_text("What is the capital of France?")
    answer = await driver.wait_for(lambda e: e.type == "reply_done", "answer")
    assert answer.text.strip() and not driver.of_type("tool_call")
    await conv.send_text("Add Tom to the picnic.")
    call = await driver.wait_for(lambda e: e.type == "tool_call", "tool_call")
    result = await driver.wait_for(lambda e: e.type == "tool_result", "tool_result")
    await driver.wait_for(lambda e: e.type == "reply_done" and e.reply_id == call.reply_id, "answer")
    await driver.close()
    assert call.name == "add_guest" and call.arguments["name"] == "Tom" and call.arguments["event"] == "picnic"
    assert call.arguments.get("plus_ones", 0) == 0 and result.error is None
    assert "Tom" in [g["name"] for g in store.event("picnic")["guests"]]
