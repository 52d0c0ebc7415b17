"""The OpenAI-Realtime endpoint with real models: the official SDK as client, G.711, manual commit, and the
reliability rules (malformed input, vanished clients, session limit, admission)."""

from __future__ import annotations

import asyncio
import base64
import json
import random

import numpy as np
import pydantic
import pytest
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from transport_support import mentions_mountain
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.server.codecs import ulaw_decode, ulaw_encode

SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
NULLABLE_IDS = {"previous_item_id", "conversation_id"}


def check_wire_event(raw: bytes | str) -> dict:
    """Each server event must parse as the SDK's own model and fill every id it names."""
    data = json.loads(raw)
    SERVER_EVENT.validate_python(data)
    assert data["event_id"], data

    def check_ids(obj: object) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if (key == "id" or key.endswith("_id")) and key not in NULLABLE_IDS:
                    assert isinstance(value, str) and value, (key, data["type"])
                check_ids(value)
        elif isinstance(obj, list):
            for item in obj:
                check_ids(item)

    check_ids(
        {k: v for k, v in data.items() if k != "error"}
    )  # error.event_id names the client's event, if any
    return data


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode()


async def test_openai_sdk_streams_a_spoken_question_and_hears_a_reply(server, question_24k):
    client = AsyncOpenAI(api_key="anything", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
    audio = np.concatenate([question_24k, np.zeros(24000 * 2, np.int16)])  # trailing silence ends the turn
    events: list[dict] = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "turn_detection": {"type": "server_vad"},
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}},
                },
            }
        )
        for start in range(0, len(audio), 2400):
            await conn.input_audio_buffer.append(audio=b64(audio[start : start + 2400]))
        while True:
            event = check_wire_event(await asyncio.wait_for(conn.recv_bytes(), 120))
            events.append(event)
            if event["type"] == "response.done":
                break
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["session.created", "session.updated"]
    for expected in (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
    ):
        assert expected in kinds, expected
    transcript = next(e for e in events if e["type"].endswith("transcription.completed"))["transcript"]
    assert mentions_mountain(transcript), transcript
    reply_audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    pcm = np.frombuffer(reply_audio, dtype="<i2")
    assert len(pcm) > 24000 * 0.5 and np.abs(pcm).max() > 1000  # over half a second of audible speech
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"][0]["transcript"].strip()
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    completed = next(e for e in events if e["type"].endswith("transcription.completed"))
    assert committed["item_id"] == completed["item_id"]


async def _until(ws, kind: str, collect: list[dict] | None = None, timeout: float = 120) -> dict:
    while True:
        event = check_wire_event(await asyncio.wait_for(ws.recv(), timeout))
        if collect is not None:
            collect.append(event)
        if event["type"] == kind:
            return event


async def test_manual_commit_with_g711_and_a_text_turn(server, question_8k):
    async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
        await _until(ws, "session.created")
        # The beta session shape, with μ-law both ways and manual turn taking.
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "input_audio_format": "g711_ulaw",
                        "output_audio_format": "g711_ulaw",
                        "turn_detection": None,
                    },
                }
            )
        )
        updated = await _until(ws, "session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        payload = ulaw_encode(question_8k)
        for start in range(0, len(payload), 1600):
            chunk = base64.b64encode(payload[start : start + 1600]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events: list[dict] = []
        await _until(ws, "conversation.item.input_audio_transcription.completed", events)
        assert "input_audio_buffer.committed" in [e["type"] for e in events]
        assert mentions_mountain(events[-1]["transcript"])
        await ws.send(json.dumps({"type": "response.create"}))
        await _until(ws, "response.done", events)
        ulaw = b"".join(
            base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
        )
        assert len(ulaw) > 8000 * 0.5 and np.abs(ulaw_decode(ulaw)).max() > 1000
        assert events[-1]["response"]["status"] == "completed"
        # A typed turn, then a reply to it.
        await ws.send(
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Say hello."}],
                    },
                }
            )
        )
        await _until(ws, "conversation.item.done")
        await ws.send(json.dumps({"type": "response.create"}))
        done = await _until(ws, "response.done")
        assert done["response"]["status"] == "completed"


def malformed_messages(limit: int) -> list[str | bytes]:
    """Every class of bad input the issue names, plus seeded random junk."""
    cases: list[str | bytes] = [
        "{not json",
        "[1, 2, 3]",
        '"a string"',
        json.dumps({"no_type": True}),
        json.dumps({"type": "no.such.event"}),
        json.dumps({"type": 42}),
        json.dumps({"type": "input_audio_buffer.append", "audio": "***not base64***"}),
        json.dumps(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()}
        ),
        json.dumps({"type": "input_audio_buffer.append", "audio": ""}),
        json.dumps({"type": "input_audio_buffer.append", "audio": 12345}),
        json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (limit + 10)}),  # oversize frame
        json.dumps({"type": "input_audio_buffer.commit"}),  # nothing to commit
        json.dumps({"type": "session.update", "session": 5}),
        json.dumps({"type": "session.update", "session": {"input_audio_format": "mp3"}}),
        json.dumps({"type": "conversation.item.create", "item": {"role": "system", "content": []}}),
        json.dumps({"type": "conversation.item.create", "item": "hi"}),
        json.dumps({"type": "conversation.item.truncate", "item_id": "nope", "audio_end_ms": 10}),
        json.dumps({"type": "response.cancel"}),  # nothing to cancel
        "[" * 50000 + "]" * 50000,  # deep nesting
        b"\xff\xfe\x00binary garbage",
    ]
    rng = random.Random(1234)
    for _ in range(20):
        cases.append("".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 60))))
    return cases


async def test_fuzz_of_malformed_messages_gets_errors_and_the_session_still_answers(server):
    cases = malformed_messages(server.config.max_message_bytes)
    async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime", max_size=None) as ws:
        await _until(ws, "session.created")
        errors = []
        for case in cases:
            await ws.send(case)
            errors.append(await _until(ws, "error", timeout=30))
        assert len(errors) == len(cases)
        assert all(e["error"]["message"] for e in errors)
        codes = {e["error"]["code"] for e in errors}
        assert {"invalid_json", "unknown_event_type", "invalid_audio", "message_too_large"} <= codes
        await ws.send(
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Hi!"}],
                    },
                }
            )
        )
        await ws.send(json.dumps({"type": "response.create"}))
        events: list[dict] = []
        done = await _until(ws, "response.done", events)
        assert done["response"]["status"] == "completed"
        assert any(e["type"] == "response.output_audio.delta" for e in events)
    assert len(server.sessions) <= 1  # the server is up and holds nothing more than this closing session


async def _ask_text(ws, text: str) -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    await ws.send(json.dumps({"type": "response.create"}))


async def test_a_client_killed_mid_reply_frees_its_session_and_others_never_notice(server):
    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    async with connect(url) as survivor:
        await _until(survivor, "session.created")
        victim = await connect(url)
        await _until(victim, "session.created")
        (victim_session,) = [s for s in server.sessions if s.ws.remote_address == victim.local_address]
        conv = victim_session.conv
        await _ask_text(victim, "Tell me a long story about the sea.")
        await _until(victim, "response.output_audio.delta")
        victim.transport.abort()  # vanish: no close frame
        await asyncio.wait_for(victim_session.closed.wait(), 60)
        assert victim_session not in server.sessions
        assert victim_session.conv is None and conv._closed and not conv._tasks
        await _ask_text(survivor, "Say hello.")
        done = await _until(survivor, "response.done")
        assert done["response"]["status"] == "completed"


async def test_max_sessions_refuses_the_next_client_with_a_close_reason(server_factory):
    async with server_factory(max_sessions=1) as server:
        url = f"ws://127.0.0.1:{server.port}/v1/realtime"
        async with connect(url) as first:
            await _until(first, "session.created")
            async with connect(url) as second:
                error = json.loads(await second.recv())
                assert error["type"] == "error" and error["error"]["code"] == "max_sessions"
                with pytest.raises(ConnectionClosed) as closed:
                    await second.recv()
            assert closed.value.rcvd.code == 1013 and "max_sessions" in closed.value.rcvd.reason
            assert server.refused == 1
        # The first one left: there is room again.
        async with connect(url) as third:
            assert (await _until(third, "session.created"))["type"] == "session.created"


async def test_subprotocol_origin_and_token_rules_on_a_live_server(server_factory):
    async with server_factory(token="letmein") as server:
        base = f"ws://127.0.0.1:{server.port}"
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{base}/v1/realtime")
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as foreign:
            await connect(f"{base}/v1/realtime?token=letmein", origin="http://evil.example")
        assert foreign.value.response.status_code == 403
        async with connect(f"{base}/v1/realtime?token=letmein", subprotocols=["realtime"]) as ws:
            assert ws.subprotocol == "realtime"
            await _until(ws, "session.created")
        async with connect(
            f"{base}/v1/realtime", additional_headers={"Authorization": "Bearer letmein"}
        ) as ws:
            assert ws.subprotocol is None
            await _until(ws, "session.created")


async def test_manual_mode_bounds_the_uncommitted_audio(server_factory):
    async with server_factory(max_queued_audio_s=1) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
            await _until(ws, "session.created")
            await ws.send(
                json.dumps(
                    {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
                )
            )
            await _until(ws, "session.updated")
            half_second = b64(np.zeros(12000, np.int16))
            for _ in range(2):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": half_second}))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": half_second}))
            error = await _until(ws, "error")
            assert error["error"]["code"] == "input_audio_buffer_full"
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            await _until(ws, "input_audio_buffer.cleared")
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": half_second}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "mine"}))
            committed = await _until(ws, "input_audio_buffer.committed")
            assert committed["item_id"]


async def test_barge_in_and_response_cancel_end_replies_as_cancelled(server_factory, question_24k):
    # Long replies, so that each is certainly still being generated when it is cut.
    async with (
        server_factory(max_reply_tokens=96) as server,
        connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws,
    ):
        await _until(ws, "session.created")
        # response.cancel: the reply ends `cancelled` by the client, and its item can be truncated.
        await _ask_text(ws, "Tell me a long story about the sea.")
        delta = await _until(ws, "response.output_audio.delta")
        await ws.send(json.dumps({"type": "response.cancel"}))
        done = await _until(ws, "response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        await ws.send(
            json.dumps(
                {
                    "type": "conversation.item.truncate",
                    "item_id": delta["item_id"],
                    "content_index": 0,
                    "audio_end_ms": 20,
                }
            )
        )
        truncated = await _until(ws, "conversation.item.truncated")
        assert truncated["item_id"] == delta["item_id"] and truncated["audio_end_ms"] == 20
        # Barge-in: speaking over a reply cancels it (turn detected), then the new question is answered.
        await _ask_text(ws, "Tell me a long story about the sea.")
        await _until(ws, "response.output_audio.delta")
        for start in range(0, len(question_24k), 2400):
            await ws.send(
                json.dumps(
                    {"type": "input_audio_buffer.append", "audio": b64(question_24k[start : start + 2400])}
                )
            )
        events: list[dict] = []
        cancelled = await _until(ws, "response.done", events)
        assert cancelled["response"]["status"] == "cancelled", cancelled["response"]
        assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
        assert "input_audio_buffer.speech_started" in [e["type"] for e in events]
