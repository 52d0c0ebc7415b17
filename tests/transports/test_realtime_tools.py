"""Realtime function calling and text-only output with the real models, the official `openai` SDK as client,
every server event validated against the SDK's own models (`check_wire_event`)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil

import jsonschema
import numpy as np
import pytest
from openai import AsyncOpenAI
from spoken import espeak_wav
from test_realtime import _until, b64, check_wire_event
from websockets.asyncio.client import connect

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "the city"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
TIME = {
    "type": "function",
    "name": "get_time",
    "description": "Get the current time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def weather_question_24k(tmp_path_factory) -> np.ndarray:
    """"What is the weather in Paris?" spoken by espeak-ng (not the assistant's Piper voice), 24 kHz int16,
    with silence around it."""
    from app.audio import read_audio, to_int16

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run scripts/system-deps.sh")
    wav = espeak_wav("What is the weather in Paris?", tmp_path_factory.mktemp("espeak") / "q.wav")
    speech = to_int16(read_audio(wav, rate=24000))
    return np.concatenate([np.zeros(7200, np.int16), speech, np.zeros(24000 * 2, np.int16)])


async def _recv_until(conn, kind: str, events: list[dict], timeout: float = 120) -> dict:
    while True:
        event = check_wire_event(await asyncio.wait_for(conn.recv_bytes(), timeout))
        events.append(event)
        if event["type"] == "error":
            raise AssertionError(f"error event: {event['error']}")
        if event["type"] == kind:
            return event


async def test_openai_sdk_tool_round_trip_from_a_spoken_question(server, weather_question_24k):
    """The issue's check: tools in the session, a spoken question, a function_call whose arguments parse and
    validate, the client's function_call_output, and a spoken answer that uses it."""
    client = AsyncOpenAI(api_key="anything", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
    events: list[dict] = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "tools": [WEATHER, TIME],
                "tool_choice": "auto",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}},
            }
        )
        updated = await _recv_until(conn, "session.updated", events)
        assert [t["name"] for t in updated["session"]["tools"]] == ["get_weather", "get_time"]
        for start in range(0, len(weather_question_24k), 2400):
            await conn.input_audio_buffer.append(audio=b64(weather_question_24k[start : start + 2400]))
        heard = await _recv_until(conn, "conversation.item.input_audio_transcription.completed", events)
        assert "paris" in heard["transcript"].lower()
        # The 135M model's own decision rarely calls (docs/tools.md): this response asks for a call, as the
        # SDK allows; which tool and its arguments are the model's.
        await conn.response.create(response={"tool_choice": "required"})
        first = await _recv_until(conn, "response.done", events)
        call_events = events[events.index(next(e for e in events if e["type"] == "response.created")) :]
        kinds = [e["type"] for e in call_events]
        assert "response.output_audio.delta" not in kinds  # the reply is the call alone
        (call_item,) = first["response"]["output"]
        assert call_item["type"] == "function_call" and call_item["name"] == "get_weather"
        arguments = json.loads(call_item["arguments"])
        jsonschema.validate(arguments, WEATHER["parameters"])
        assert "paris" in arguments["city"].lower()
        delta = next(e for e in call_events if e["type"] == "response.function_call_arguments.delta")
        done = next(e for e in call_events if e["type"] == "response.function_call_arguments.done")
        added = next(e for e in call_events if e["type"] == "response.output_item.added")
        assert added["item"]["type"] == "function_call" and added["output_index"] == 0
        assert delta["call_id"] == done["call_id"] == call_item["call_id"]
        assert delta["item_id"] == done["item_id"] == call_item["id"] == added["item"]["id"]
        assert done["arguments"] == delta["delta"] == call_item["arguments"] and done["name"] == "get_weather"

        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": call_item["call_id"],
                "output": json.dumps({"city": "Paris", "sky": "sunny", "temperature": 21}),
            }
        )
        await _recv_until(conn, "conversation.item.done", events)
        start = len(events)
        await conn.response.create()
        second = await _recv_until(conn, "response.done", events)
    answer_events = events[start:]
    (message,) = second["response"]["output"]
    transcript = message["content"][0]["transcript"]
    assert message["type"] == "message" and "sunny" in transcript.lower(), transcript
    audio = b"".join(base64.b64decode(e["delta"]) for e in answer_events if e["type"] == "response.output_audio.delta")
    pcm = np.frombuffer(audio, dtype="<i2")
    assert len(pcm) > 24000 * 0.5 and np.abs(pcm).max() > 1000  # a spoken answer


async def test_text_only_output_sends_output_text_and_never_runs_tts(server, assistant, monkeypatch):
    synthesised: list[str] = []
    real = assistant.voice.synthesize
    monkeypatch.setattr(assistant.voice, "synthesize", lambda text: synthesised.append(text) or real(text))
    async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
        await _until(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {"output_modalities": ["text"]}}))
        updated = await _until(ws, "session.updated")
        assert updated["session"]["output_modalities"] == ["text"]
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create"}))
        events: list[dict] = []
        done = await _until(ws, "response.done", events)
        kinds = [e["type"] for e in events]
        assert not [k for k in kinds if k.startswith("response.output_audio")], kinds
        assert synthesised == []  # Piper never ran for it
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text.strip() and next(e for e in events if e["type"] == "response.output_text.done")["text"] == text.strip()
        part = next(e for e in events if e["type"] == "response.content_part.added")["part"]
        assert part["type"] == "text"
        assert done["response"]["output_modalities"] == ["text"]
        assert done["response"]["output"][0]["content"][0] == {"type": "output_text", "text": text.strip()}
        # One response with audio (per response.create): the spy sees Piper run, so its silence above counts.
        await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["audio"]}}))
        events = []
        await _until(ws, "response.done", events)
        assert any(e["type"] == "response.output_audio.delta" for e in events) and synthesised


async def test_bad_tools_and_unknown_call_ids_get_invalid_request_errors(server):
    async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
        await _until(ws, "session.created")
        bad = [
            ({"tools": [{"type": "mcp", "server_label": "x"}]}, "session.tools[0].type"),
            ({"tools": [{**WEATHER, "parameters": {"type": "object", "properties": {"x": {"type": "date"}}}}]},
             "session.tools[0]"),
            ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "session.tool_choice"),
            ({"tools": "get_weather"}, "session.tools"),
        ]  # fmt: skip
        for session, param in bad:
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            error = (await _until(ws, "error"))["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == param, error
        await ws.send(json.dumps({"type": "session.update", "session": {"tools": [TIME]}}))
        assert (await _until(ws, "session.updated"))["session"]["tools"][0]["name"] == "get_time"
        output = {"type": "function_call_output", "call_id": "call_nope", "output": "{}"}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": output}))
        error = (await _until(ws, "error"))["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "item.call_id"
        # Client-side call, text only: a function_call item and no message; its output continues the turn.
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Time in Oslo?"}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create", "response": {
            "tool_choice": {"type": "function", "name": "get_time"}, "output_modalities": ["text"]}}))  # fmt: skip
        events: list[dict] = []
        done = await _until(ws, "response.done", events)
        (call,) = done["response"]["output"]
        assert call["type"] == "function_call" and call["status"] == "completed"
        assert not [e for e in events if e["type"].startswith(("response.output_text", "response.output_audio"))]
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {**output, "call_id": call["call_id"]}}))
        added = await _until(ws, "conversation.item.added")
        assert added["item"]["type"] == "function_call_output" and added["item"]["call_id"] == call["call_id"]
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {**output, "call_id": call["call_id"]}}))
        assert (await _until(ws, "error"))["error"]["param"] == "item.call_id"  # answered already


async def test_a_server_side_tool_on_the_assistant_runs_on_the_server_and_is_shown_to_the_client(server, assistant):
    ran: list[str] = []

    def get_weather(city: str) -> dict:
        """Get the current weather in a city."""
        ran.append(city)
        return {"city": city, "sky": "sunny"}

    assistant.tools.register(get_weather)  # every new conversation of this assistant gets it (as skills do)
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
            await _until(ws, "session.created")
            item = {"type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "What is the weather in Paris?"}]}  # fmt: skip
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            await ws.send(json.dumps({"type": "response.create", "response": {"tool_choice": "required"}}))
            events: list[dict] = []
            done = await _until(ws, "response.done", events)
    finally:
        assistant.tools.remove("get_weather")
    call, message = done["response"]["output"]
    assert call["type"] == "function_call" and json.loads(call["arguments"])["city"].lower() == "paris"
    assert ran == [json.loads(call["arguments"])["city"]]  # it ran once, on the server
    output = next(e["item"] for e in events
                  if e["type"] == "conversation.item.added" and e["item"]["type"] == "function_call_output")  # fmt: skip
    assert output["call_id"] == call["call_id"] and json.loads(output["output"])["sky"] == "sunny"
    assert message["type"] == "message" and "sunny" in message["content"][0]["transcript"].lower()
    message_events = [e for e in events if e.get("item_id") == message["id"]]
    assert {e["output_index"] for e in message_events if "output_index" in e} == {1}
    assert any(e["type"] == "response.output_audio.delta" for e in message_events)


async def test_per_response_tools_apply_to_that_response_only(server):
    async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
        await _until(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {"tools": [TIME], "output_modalities": ["text"]}}))
        await _until(ws, "session.updated")
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Rome?"}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create",
                                  "response": {"tools": [WEATHER], "tool_choice": "required"}}))  # fmt: skip
        (call,) = (await _until(ws, "response.done"))["response"]["output"]
        assert call["name"] == "get_weather"  # the only tool of that response
        jsonschema.validate(json.loads(call["arguments"]), WEATHER["parameters"])
        await ws.send(json.dumps({"type": "response.create", "response": {"tool_choice": "required"}}))
        (call,) = (await _until(ws, "response.done"))["response"]["output"]
        assert call["name"] == "get_time"  # the session's tools are back


async def _text_reply(ws, text: str, response: dict | None = None) -> str:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    await ws.send(json.dumps({"type": "response.create", "response": response or {}}))
    done = await _until(ws, "response.done")
    assert done["response"]["status"] == "completed", done
    (message,) = done["response"]["output"]
    return "".join(part.get("text") or part.get("transcript") or "" for part in message["content"])


async def test_response_instructions_apply_to_that_response_only_and_late_session_instructions_apply(server):
    """response.create's `instructions` shape that reply exactly as session instructions would (greedy: the
    same words), and the session's prompt is back once it is done; a session.update of the instructions
    after the conversation has started keeps the history and changes the prompt."""
    pirate = "You are a pirate. Always talk like a pirate, with plenty of arrr."
    question = "Tell me about the sea."
    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    async with connect(url) as plain, connect(url) as instructed, connect(url) as overridden:
        ids = {}
        for name, ws in (("plain", plain), ("instructed", instructed), ("overridden", overridden)):
            ids[name] = (await _until(ws, "session.created"))["session"]["id"]
            session = {"output_modalities": ["text"]} | ({"instructions": pirate} if ws is instructed else {})
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            await _until(ws, "session.updated")
        live = {name: next(s for s in server.sessions if getattr(s, "session_id", None) == sid)
                for name, sid in ids.items()}  # fmt: skip

        def prompt(name: str) -> str:
            return live[name].conv.session.history[0]["content"]

        default_reply = await _text_reply(plain, question)
        pirate_reply = await _text_reply(instructed, question)
        assert pirate_reply != default_reply  # the instructions matter to this model, or the test says nothing
        assert await _text_reply(overridden, question, {"instructions": pirate}) == pirate_reply
        assert prompt("overridden") == prompt("plain") != prompt("instructed")  # the session's prompt is back
        history = live["overridden"].conv.session.history
        assert [m["content"] for m in history[1:]] == [question, pirate_reply]

        await overridden.send(json.dumps({"type": "session.update", "session": {"instructions": pirate}}))
        updated = await _until(overridden, "session.updated")
        assert updated["session"]["instructions"] == pirate
        assert prompt("overridden") == prompt("instructed")
        assert [m["content"] for m in live["overridden"].conv.session.history[1:]] == [question, pirate_reply]
