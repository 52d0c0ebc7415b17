"""The OpenAI-compatible chat API (`/v1/chat/completions`, `/v1/models`) with the official `openai` SDK.

Real engine (the shared default assistant), real HTTP server, real SDK; short max_tokens keep it fast.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest
from transport_support import make_config

from app.server.openai_api import MODEL_ID, ChatApi, api_port
from app.server.openai_schema import MAX_COMPLETION_TOKENS

SYSTEM = "You are a helpful assistant. Answer in one short sentence."
HISTORY = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Hi, I am planning a trip."},
    {"role": "assistant", "content": "That sounds fun! Where to?"},
    {"role": "user", "content": "What is the capital of France?"},
]
HANG_GUARD_S = 120.0  # turns a hang into a failure; not a speed bound


def client(api: ChatApi, key: str = "anything") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key=key, max_retries=0)


def local_greedy(assistant, max_tokens: int) -> str:
    """The same conversation straight through llm.Session, for comparison."""
    session = assistant.llm.session(system_prompt=SYSTEM)
    session.add_turn(HISTORY[1]["content"], HISTORY[2]["content"])
    session.add_turn(HISTORY[3]["content"])
    return "".join(d.text for d in session.generate(max_tokens=max_tokens))


async def test_sdk_whole_and_streamed_replies_equal_the_local_session(assistant):
    expected = local_greedy(assistant, max_tokens=12)
    async with ChatApi(assistant, make_config(), port=0) as api:
        sdk = client(api)
        whole = await sdk.chat.completions.create(model="any-name", messages=HISTORY, max_tokens=12, temperature=0)
        stream = await sdk.chat.completions.create(
            model=MODEL_ID, messages=HISTORY, max_completion_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        models = await sdk.models.list()

    assert expected.strip()
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason in ("stop", "length")
    assert 0 < whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 20
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    assert chunks[0].choices[0].delta.role == "assistant"
    text_chunks = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(text_chunks) >= 2 and "".join(text_chunks) == expected  # streamed, piece by piece
    assert chunks[-2].choices[0].finish_reason == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    assert [m.id for m in models.data] == [MODEL_ID]


async def test_a_conversations_next_request_reuses_its_kept_session(assistant):
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of France?"}]
    async with ChatApi(assistant, make_config(), port=0) as api:
        sdk = client(api)
        first = await sdk.chat.completions.create(model=MODEL_ID, messages=turn1, max_tokens=12, temperature=0)
        turn2 = [*turn1, {"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And of Italy?"}]  # fmt: skip
        second = await sdk.chat.completions.create(model=MODEL_ID, messages=turn2, max_tokens=12, temperature=0)
        other = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
        await sdk.chat.completions.create(model=MODEL_ID, messages=other, max_tokens=2, temperature=0)
    r1, r2, r3 = api.recent
    assert not r1["reused"] and r1["prefill_tokens"] == r1["prompt_tokens"] - 1  # all but the pending token
    # The kept session already holds turn 1 and its reply: only the new turn is computed (a fresh session
    # would prefill prompt_tokens - 1 again).
    assert r2["reused"] and 0 < r2["prefill_tokens"] <= r2["prompt_tokens"] - r1["prompt_tokens"]
    assert second.choices[0].message.content.strip()
    assert not r3["reused"]  # another system prompt: another conversation


async def test_raw_stream_is_server_sent_events_ending_with_done(assistant):
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 3,
            "temperature": 0, "stream": True}  # fmt: skip
    async with ChatApi(assistant, make_config(), port=0) as api, aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{api.port}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            raw = (await resp.read()).decode()
    events = [block for block in raw.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] == "length" and "usage" not in last  # not asked for


async def test_client_disconnect_mid_stream_cancels_generation(assistant):
    messages = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]
    async with ChatApi(assistant, make_config(), port=0) as api:
        stream = await client(api).chat.completions.create(
            model=MODEL_ID, messages=messages, max_tokens=MAX_COMPLETION_TOKENS, temperature=0, stream=True
        )
        async for c in stream:
            if c.choices and c.choices[0].delta.content:
                break
        await stream.close()  # the SDK drops the connection
        await asyncio.wait_for(api.idle.wait(), HANG_GUARD_S)
        assert api.counts["cancelled"] == 1 and api.counts["completed"] == 0
        assert api.recent[-1]["completion_tokens"] < MAX_COMPLETION_TOKENS
        # ... and the server goes on serving.
        assert (await client(api).models.list()).data[0].id == MODEL_ID


async def test_token_host_and_origin_are_checked(assistant):
    config = make_config(token="s3cret")
    async with ChatApi(assistant, config, port=0) as api:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client(api, key="wrong").models.list()
        assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            await client(api, key="wrong").chat.completions.create(model=MODEL_ID, messages=HISTORY)
        assert (await client(api, key="s3cret").models.list()).data[0].id == MODEL_ID

        url = f"http://127.0.0.1:{api.port}/v1/models"
        auth = {"Authorization": "Bearer s3cret"}
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={**auth, "Host": "attacker.example"}) as resp:  # DNS rebinding
                assert resp.status == 403 and (await resp.json())["error"]["code"] == "host_not_allowed"
            async with http.get(url, headers={**auth, "Origin": "http://attacker.example"}) as resp:
                assert resp.status == 403 and (await resp.json())["error"]["code"] == "origin_not_allowed"
        assert api.counts["requests"] == 0  # refused before any generation

    from app.server import InsecureBindError

    with pytest.raises(InsecureBindError):
        ChatApi(assistant, make_config(host="0.0.0.0"), port=0)  # beyond loopback only with a token


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_type"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "missing_required_parameter"),
        ({"model": "m", "messages": []}, 400, "invalid_type"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, 400, "unsupported_role"),
        ({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
         400, "invalid_conversation"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
         400, "unsupported_content"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "invalid_value"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, 400, "invalid_value"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "invalid_type"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "unsupported_value"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}] * 300}, 400, "too_many_messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "x" * 300_000}]}, 413, "request_too_large"),
    ],
)  # fmt: skip
async def test_malformed_requests_get_openai_errors(assistant, body, status, code):
    config = make_config(max_message_bytes=256 * 1024)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with ChatApi(assistant, config, port=0) as api, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{api.port}/v1"
        async with http.post(f"{base}/chat/completions", data=data,
                             headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
            assert resp.status == status
            error = (await resp.json())["error"]
            assert error["code"] == code and error["message"] and "Traceback" not in error["message"]
        async with http.get(f"{base}/nowhere") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
        async with http.get(f"{base}/models") as resp:  # still serving
            assert resp.status == 200
    assert api.counts["completed"] == 0


def test_api_port_defaults_to_the_next_port_and_can_be_turned_off():
    config = make_config()
    config.server.port = 8765
    assert api_port(config, 8765) == 8766
    config.server.api_port = 0
    assert api_port(config, 8765) is None
    config.server.api_port = 9100
    assert api_port(config, 8765) == 9100
    config.server.port, config.server.api_port = 0, None
    assert api_port(config, 41234) == 0  # the main port was picked freely: so is this one
