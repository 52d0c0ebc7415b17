"""The remote LLM backend (llm.backend = "openai") against specvoice's own OpenAI-compatible endpoint.

The server side is the real engine behind `ChatApi`; the client side is `llm.remote` through the official
`openai` SDK. Blocking session calls run in a thread (`asyncio.to_thread`), since the server shares this
test's event loop. Timeouts only turn a hang into a failure; the no-hang checks bound the error time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading

import pytest
from transport_support import make_config

from app.server.openai_api import MODEL_ID, ChatApi
from llm.remote import RemoteConfig, RemoteLLM, RemoteLLMError
from llm.remote_session import RemoteSession

HANG_GUARD_S = 120.0
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


@pytest.fixture
async def chat_api(assistant):
    async with ChatApi(assistant, make_config(), port=0) as api:
        yield api


@pytest.fixture
def remote(chat_api):
    llm = RemoteLLM(RemoteConfig(f"http://127.0.0.1:{chat_api.port}/v1", MODEL_ID, timeout_s=30, max_retries=0))
    yield llm
    llm.close()


async def in_thread(fn, *args):
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), HANG_GUARD_S)


def reply(session: RemoteSession, max_tokens: int) -> list[str]:
    return [d.text for d in session.generate(max_tokens=max_tokens)]


async def endpoint_reply(api: ChatApi, system: str, question: str, max_tokens: int) -> str:
    """The endpoint's own greedy answer, asked with the official SDK (what the remote session must match)."""
    import openai

    sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key="x", max_retries=0)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    out = await sdk.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=max_tokens, temperature=0)
    return out.choices[0].message.content


async def first_event(conv, types: tuple[str, ...], seen: list | None = None):
    async def _wait():
        async for event in conv.events():
            if seen is not None:
                seen.append(event)
            if event.type in types:
                return event

    return await asyncio.wait_for(_wait(), HANG_GUARD_S)


async def test_remote_session_streams_a_reply_and_keeps_the_history(remote, chat_api):
    session = remote.session(system_prompt=SYSTEM)
    session.extend("What is the capital")
    session.extend("of France?")  # prefill calls only keep the text
    deltas = await in_thread(reply, session, 12)
    text = "".join(deltas)

    direct = await endpoint_reply(chat_api, SYSTEM, "What is the capital of France?", 12)
    assert len(deltas) >= 2 and text == direct  # streamed, and the same as the endpoint's own answer
    assert session.finish_reason in ("eos", "length")
    assert session.history == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": text.strip()},
    ]
    assert 0 < session.last_reply.generated <= 12 and session.last_usage.prompt_tokens > 10
    # The next request resends the history, oldest first (a prefix cache on the server reuses it).
    session.add_turn("And of Italy?")
    assert [m["content"] for m in session.messages()] == [SYSTEM, "What is the capital of France?",
                                                          text.strip(), "And of Italy?"]  # fmt: skip


async def test_cancel_closes_the_stream_and_the_server_stops(remote, chat_api):
    session = remote.session(system_prompt=SYSTEM)
    session.revise("Count from 1 to 500, separated by commas.")
    cancel = threading.Event()
    steps = session.generate(max_tokens=1000, cancel=cancel)
    first = await in_thread(next, steps)
    assert first.text
    cancel.set()  # barge-in
    assert await in_thread(next, steps, None) is None
    assert session.finish_reason == "cancelled"
    await asyncio.wait_for(chat_api.idle.wait(), HANG_GUARD_S)  # the server's generation ended too
    assert chat_api.counts["cancelled"] == 1 and chat_api.recent[-1]["completion_tokens"] < 1000
    # A dropped (preemptive) reply is forgotten and the user's turn reopens, as with the local session.
    session.discard_reply()
    assert session.history[-1] == {"role": "user", "content": "Count from 1 to 500, separated by commas."}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_server_down_is_a_clear_error_without_a_hang():
    llm = RemoteLLM(RemoteConfig(f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=2, max_retries=1))
    try:
        session = llm.session(system_prompt=SYSTEM)
        session.revise("Hello?")
        with pytest.raises(RemoteLLMError, match="cannot reach the remote LLM at http://127.0.0.1"):
            await in_thread(reply, session, 8)
        assert session.finish_reason == "error"
        assert session.history[-1] == {"role": "user", "content": "Hello?"}  # nothing lost
    finally:
        llm.close()


async def test_a_server_that_never_answers_times_out():
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader, writer):  # accepts, reads, never answers
        accepted.append(writer)
        await reader.read(1 << 16)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    llm = RemoteLLM(RemoteConfig(f"http://127.0.0.1:{port}/v1", "m", timeout_s=1, max_retries=0))
    try:
        session = llm.session()
        session.revise("Hello?")
        with pytest.raises(RemoteLLMError, match="did not answer within 1 s"):
            await in_thread(reply, session, 8)
        assert accepted  # it did connect: this is the read timeout, not a refused connection
    finally:
        llm.close()
        for writer in accepted:
            writer.close()
        server.close()


async def test_conversation_text_turn_through_the_remote_backend(assistant, chat_api, remote):
    config = make_config(max_reply_tokens=12)
    config.llm.backend, config.llm.base_url, config.llm.model = "openai", remote.config.base_url, MODEL_ID
    remote_assistant = dataclasses.replace(assistant, config=config, llm=remote)
    conv = remote_assistant.conversation()
    events: list = []
    await conv.send_text("What is the capital of France?")
    done = await first_event(conv, ("reply_done", "error"), events)
    await conv.close()

    assert done.type == "reply_done", done
    expected = await endpoint_reply(chat_api, config.llm.system_prompt, "What is the capital of France?", 12)
    assert done.text == expected.strip()
    assert any(e.type == "reply_audio" for e in events)  # spoken, as with the local backend
    assert conv.session.history[-1] == {"role": "assistant", "content": done.text}


async def test_conversation_reports_an_unreachable_backend(assistant):
    config = make_config()
    llm = RemoteLLM(RemoteConfig(f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=2, max_retries=0))
    conv = dataclasses.replace(assistant, config=config, llm=llm).conversation()
    try:
        await conv.send_text("Hello?")
        event = await first_event(conv, ("error", "reply_done"))
        assert event.type == "error" and "cannot reach the remote LLM" in event.message
    finally:
        await conv.close()
        llm.close()


async def test_backend_settings_and_the_key_from_a_file_or_the_environment(assistant, tmp_path):
    from app.assistant import _backend, load_remote
    from app.config import ConfigError, load_config

    config = load_config(environ={"SPECVOICE_LLM_BACKEND": "openai", "SPECVOICE_LLM_API_KEY": "wrong"})
    assert _backend(config) == "openai" and config.llm.api_key == "wrong"
    with pytest.raises(ConfigError, match="llm.model"):
        load_remote(config)
    config.llm.model = MODEL_ID
    with pytest.raises(ConfigError, match="llm.base_url"):
        load_remote(config)
    config.llm.backend = "remote"
    with pytest.raises(ConfigError, match="not one of local, openai"):
        _backend(config)

    async with ChatApi(assistant, make_config(token="s3cret"), port=0) as api:
        config.llm.base_url, config.llm.max_retries = f"http://127.0.0.1:{api.port}/v1", 0
        refused = load_remote(config)  # the key from the environment is the wrong one
        try:
            session = refused.session()
            session.revise("Hi")
            with pytest.raises(RemoteLLMError, match="refused the request: HTTP 401"):
                await in_thread(reply, session, 2)
        finally:
            refused.close()
        key = tmp_path / "llm_key"
        key.write_text("s3cret\n")
        config.llm.api_key_file = str(key)  # a key file wins over the environment
        accepted = load_remote(config)
        try:
            session = accepted.session()
            session.revise("Hi")
            assert "".join(await in_thread(reply, session, 2)).strip()
        finally:
            accepted.close()
