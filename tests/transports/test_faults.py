"""The fault campaign: every way a client can misbehave, against a live server with the real models.

Loopback only, bounded in count and time. Each case asserts what the server answered, and then that the
server still serves: /healthz within 100 ms and a fresh client's text turn completing (`still_serving`).
Most cases share one server (module scope); cases that need other limits start their own over the same
loaded models (cheap: no model load).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import gc
import json
import logging
import os
import random
import socket

import numpy as np
import psutil
import pytest
import pytest_asyncio
from fault_support import (
    CREATE,
    ask,
    fresh_turn_completes,
    get,
    raw_http,
    still_serving,
    until,
    user_text,
)
from transport_support import make_config
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame
from websockets.uri import parse_uri

from app.server import Server
from app.server.codecs import ulaw_encode
from app.server.session import NO_PARTIAL_DECODES_MS

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def srv(assistant):
    config = make_config(max_reply_tokens=8, max_sessions=8, max_sessions_per_client=8)
    async with Server(assistant, config) as server:
        yield server


def url(server, path: str = "/v1/realtime") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def tracebacks(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


# --- 1. Host allow-list, token --------------------------------------------------------------------------


async def test_dns_rebinding_hosts_and_duplicate_hosts_are_refused(srv):
    port = srv.port
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    evil = f"evil.example:{port}"
    status, _, _ = await raw_http(
        port, get("/v1/realtime", port, host=evil, Origin=f"http://{evil}", **upgrade)
    )
    assert status == 421
    assert (await raw_http(port, get("/healthz", port, host=evil)))[0] == 421
    assert (await raw_http(port, get("/", port, host=evil)))[0] == 421
    sessions_before = srv.total_sessions
    twice = f"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n".encode()
    twice += "".join(f"{k}: {v}\r\n" for k, v in upgrade.items()).encode() + b"\r\n"
    assert (await raw_http(port, twice))[0] == 400
    assert srv.total_sessions == sessions_before  # no session for any of them
    for host in ("localhost", f"localhost:{port}", f"[::1]:{port}", "127.0.0.7"):
        assert (await raw_http(port, get("/healthz", port, host=host)))[0] == 200, host
    await still_serving(srv)


async def test_with_a_token_healthz_says_only_ok_and_the_page_stays_public(server_factory):
    async with server_factory(token="s3cret-token", max_reply_tokens=8) as server:
        port = server.port
        status, headers, body = await raw_http(port, get("/healthz", port))
        assert status == 200 and json.loads(body) == {"status": "ok"}
        full = json.loads(
            (await raw_http(port, get("/healthz", port, Authorization="Bearer s3cret-token")))[2]
        )
        assert "sessions" in full and "rss_mb" in full
        status, headers, body = await raw_http(port, get("/", port))
        assert status == 200 and b"app.js" in body
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert headers["referrer-policy"] == "no-referrer" and headers["x-content-type-options"] == "nosniff"
        await still_serving(server, additional_headers={"Authorization": "Bearer s3cret-token"})


async def test_the_token_never_reaches_the_log_at_debug_level(server_factory, caplog):
    token = "tok-9f8e7d6c5b4a"
    caplog.set_level(logging.DEBUG)
    async with server_factory(token=token, max_reply_tokens=8) as server:
        port = server.port
        await raw_http(port, get(f"/?token={token}", port))
        await raw_http(port, get("/healthz", port, Authorization=f"Bearer {token}"))
        async with connect(f"{url(server)}?token={token}") as ws:
            await until(ws, "session.created")
        async with connect(url(server), subprotocols=["realtime", f"openai-insecure-api-key.{token}"]) as ws:
            await until(ws, "session.created")
        await fresh_turn_completes(port, additional_headers={"Authorization": f"Bearer {token}"})
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "GET /" in logged  # the request lines were logged (at debug)...
    assert token not in logged  # ...without the token


# --- 2. Slots and time ------------------------------------------------------------------------------------


async def test_idle_sockets_are_closed_and_their_slots_freed(server_factory):
    async with server_factory(max_sessions=2, idle_timeout_s=1.0, max_reply_tokens=8) as server:
        silent = [await connect(url(server)) for _ in range(2)]
        for ws in silent:
            await until(ws, "session.created")
        for ws in silent:  # nothing sent: each is closed (1000, with the reason), within a few seconds
            with pytest.raises(ConnectionClosed) as closed:
                await until(ws, "never", timeout=10)
            assert closed.value.rcvd.code == 1000 and "idle" in closed.value.rcvd.reason
        await still_serving(server)


async def test_realtime_idle_timeout_ms_is_honoured(srv):
    async with connect(url(srv)) as ws:
        await until(ws, "session.created")
        td = {"type": "server_vad", "idle_timeout_ms": 1000}
        await ws.send(json.dumps({"type": "session.update", "session": {"turn_detection": td}}))
        await until(ws, "session.updated")
        with pytest.raises(ConnectionClosed) as closed:
            await until(ws, "never", timeout=10)
        assert closed.value.rcvd.code == 1000 and "idle for 1 s" in closed.value.rcvd.reason
    await still_serving(srv)


async def test_twilio_must_start_in_time_and_waiting_streams_take_no_session(server_factory):
    async with server_factory(max_sessions=1, start_timeout_s=1.0, max_reply_tokens=8) as server:
        phone = await connect(url(server, "/twilio"))
        # A stream that has not started holds no conversation: a Realtime client still gets the one slot.
        await fresh_turn_completes(server.port)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(phone.recv(), 10)
        assert closed.value.rcvd.code == 1000 and "no start event" in closed.value.rcvd.reason
        await still_serving(server)


async def test_sessions_per_client_address_are_capped(server_factory):
    async with server_factory(max_sessions_per_client=2, max_reply_tokens=8) as server:
        async with connect(url(server)) as a, connect(url(server)) as b:
            await until(a, "session.created")
            await until(b, "session.created")
            async with connect(url(server)) as third:
                error = json.loads(await third.recv())
                assert error["error"]["code"] == "max_sessions_per_client"
                with pytest.raises(ConnectionClosed) as closed:
                    await third.recv()
                assert closed.value.rcvd.code == 1013
        await still_serving(server)


# --- 4. Every bad input a clean, typed error --------------------------------------------------------------

BAD_UPDATES = [
    ({"audio": {"input": {"format": {"type": [1]}}}}, "session.audio.input.format"),
    ({"turn_detection": {"type": "semantic_vad", "eagerness": {"x": 1}}}, "session.turn_detection.eagerness"),
    ({"turn_detection": {"type": "server_vad", "silence_duration_ms": 1e308}}, "silence_duration_ms"),
    ({"turn_detection": {"type": "server_vad", "threshold": 5}, "instructions": "Be a pirate."}, "threshold"),
    ({"turn_detection": {"type": "server_vad", "create_response": "yes"}}, "create_response"),
    ({"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5}}, "idle_timeout_ms"),
    ({"instructions": ["not", "text"]}, "session.instructions"),
]


async def test_wrong_types_and_absurd_numbers_are_typed_errors_and_change_nothing(srv, caplog):
    caplog.set_level(logging.WARNING)
    async with connect(url(srv), max_size=None) as ws:
        created = await until(ws, "session.created")
        original = created["session"]
        for update, param in BAD_UPDATES:
            await ws.send(json.dumps({"type": "session.update", "event_id": "ev1", "session": update}))
            error = (await until(ws, "error"))["error"]
            assert error["type"] == "invalid_request_error" and error["code"] == "invalid_value", error
            assert param in (error["param"] or ""), (update, error)
        for raw in (
            '{"type": "session.update", "session": {"turn_detection": {"threshold": NaN}}}',
            '{"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": Infinity}',
        ):
            await ws.send(raw)
            assert (await until(ws, "error"))["error"]["code"] == "invalid_json"
        await ws.send(
            json.dumps({"type": "conversation.item.create", "item": {"role": "user", "content": 5}})
        )
        error = (await until(ws, "error"))["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "item.content")
        await ws.send(b'{"type": "response.create", "x": "\xff\xfe"}', text=True)  # invalid UTF-8: no 1007
        assert (await until(ws, "error"))["error"]["code"] == "invalid_json"
        # Every refused update left the session exactly as it was.
        await ws.send(json.dumps({"type": "session.update", "session": {}}))
        assert (await until(ws, "session.updated"))["session"] == original
        done = await ask(ws)  # and the same session still answers
        assert done["response"]["status"] == "completed"
    assert not tracebacks(caplog)
    await still_serving(srv)


async def test_over_long_text_is_refused_up_front_and_the_next_question_is_answered(srv, caplog):
    caplog.set_level(logging.WARNING)
    async with connect(url(srv), max_size=None) as ws:
        await until(ws, "session.created")
        await ws.send(user_text("word " * 8000))  # 40 kB
        error = (await until(ws, "error"))["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "text_too_long",
            "item.content",
        )
        done = await ask(ws, "Say hello.")
        assert done["response"]["status"] == "completed"
    assert not tracebacks(caplog)
    await still_serving(srv)


async def test_a_reply_that_fails_ends_with_response_done_failed_and_the_session_goes_on(srv):
    async with connect(url(srv)) as ws:
        await until(ws, "session.created")
        (session,) = [s for s in srv.sessions if s.ws.remote_address == ws.local_address]
        llm = session.conv.session
        real_generate = llm.generate

        def broken_generate(*args, **kwargs):  # fault injection: the model fails once, mid-reply
            llm.generate = real_generate
            raise RuntimeError("injected model failure")

        llm.generate = broken_generate
        done = await ask(ws, "Say hello.")
        assert done["response"]["status"] == "failed"
        assert done["response"]["status_details"]["type"] == "failed"
        done = await ask(ws, "Say hello again.")
        assert done["response"]["status"] == "completed"
    await still_serving(srv)


async def test_create_and_cancel_in_one_burst_plays_nothing_and_the_reason_does_not_leak(srv, question_24k):
    async with connect(url(srv)) as ws:
        await until(ws, "session.created")
        await ws.send(user_text("Tell me a long story about the sea."))
        await ws.send(CREATE)
        await ws.send(json.dumps({"type": "response.cancel"}))
        events: list[dict] = []
        done = await until(ws, "response.done", events)
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        assert not [e for e in events if e["type"] == "response.output_audio.delta"]
        assert [e["type"] for e in events].count("response.created") == 1
        # The next reply is cut by speech, not by the client: its reason is turn_detected.
        await ws.send(user_text("Tell me a long story about the sea."))
        await ws.send(CREATE)
        await until(ws, "response.output_audio.delta")
        pcm = question_24k.astype("<i2")
        for start in range(0, len(pcm), 4800):
            chunk = base64.b64encode(pcm[start : start + 4800].tobytes()).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        cut = await until(ws, "response.done")
        assert cut["response"]["status"] == "cancelled"
        assert cut["response"]["status_details"]["reason"] == "turn_detected"
    await still_serving(srv)


async def test_commit_in_vad_mode_commits_once(srv, question_24k):
    async with connect(url(srv)) as ws:
        await until(ws, "session.created")
        auto_off = {"type": "server_vad", "create_response": False}
        await ws.send(json.dumps({"type": "session.update", "session": {"turn_detection": auto_off}}))
        await until(ws, "session.updated")
        pcm = question_24k.astype("<i2")  # speech with no trailing silence: the turn is still open
        for start in range(0, len(pcm), 4800):
            chunk = base64.b64encode(pcm[start : start + 4800].tobytes()).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events: list[dict] = []
        await until(ws, "conversation.item.input_audio_transcription.completed", events)
        committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
        assert len(committed) == 1, [e["type"] for e in events]
        assert committed[0]["item_id"] == events[-1]["item_id"]
    await still_serving(srv)


# --- floods -----------------------------------------------------------------------------------------------


async def test_a_3_mib_frame_closes_only_that_connection(srv):
    async with connect(url(srv), max_size=None) as ws:
        await until(ws, "session.created")
        await ws.send("x" * (3 << 20))
        with pytest.raises(ConnectionClosed) as closed:
            await until(ws, "never", timeout=30)
        assert closed.value.rcvd.code == 1009
    await still_serving(srv)


async def test_100k_malformed_messages_get_bounded_errors_then_a_close(srv, caplog):
    caplog.set_level(logging.INFO)
    errors = 0
    async with connect(url(srv)) as ws:
        await until(ws, "session.created")

        async def read() -> None:
            nonlocal errors
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    errors += json.loads(message)["type"] == "error"

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        started = loop.time()
        with contextlib.suppress(ConnectionClosed):  # the server closes long before the last one
            for _ in range(100_000):
                await ws.send("{not json")
        await asyncio.wait_for(reader, 60)
        elapsed = loop.time() - started
        assert ws.close_code == 1008 and "too many bad messages" in ws.close_reason
    # The budget: max_errors at once, refilled at max_errors per minute while the flood lasted.
    budget = srv.config.max_errors * (1 + elapsed / 60)
    assert 0 < errors <= budget + 1, (errors, elapsed)
    session_lines = [r for r in caplog.records if r.name.startswith("app.server")]
    assert len(session_lines) <= 10  # the log stays bounded
    await still_serving(srv)


async def test_1000_connections_dribbling_headers_do_not_stop_the_server(srv):
    conns = []
    try:
        for _ in range(1000):
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            conns.append(writer)
        await asyncio.gather(*(w.drain() for w in conns))
        await still_serving(srv)  # while all 1000 are still open
    finally:
        for writer in conns:
            writer.transport.abort()


async def test_an_audio_flood_is_throttled_while_others_are_served(srv):
    # Quiet noise: the VAD scores every frame of it, but no speech starts (the ASR is not what is tested).
    noise = ulaw_encode(np.random.default_rng(0).integers(-40, 40, 8000 * 25).astype(np.int16))
    flood_message = json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(noise).decode()}
    )
    async with connect(url(srv)) as flood:
        await until(flood, "session.created")
        await flood.send(
            json.dumps({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}})
        )
        await until(flood, "session.updated")

        async def pour() -> None:
            for _ in range(6):  # 150 s of audio, as fast as the socket takes it
                await flood.send(flood_message)

        (session,) = [s for s in srv.sessions if s.ws.remote_address == flood.local_address]
        pouring = asyncio.create_task(pour())
        try:
            await still_serving(srv)
            # Throttled: 25 s of audio per message against a 10 s burst at 2x real time...
            assert session.pacer.credit < 0
            # ...and no longer given the work that only buys a live speaker latency (docs/transports.md).
            assert not session.conv.config.preemptive
            assert session.conv.config.decode_interval_ms == NO_PARTIAL_DECODES_MS
        finally:
            pouring.cancel()
    await sessions_closed(srv, 30)  # a throttled client that leaves is let go at once, not after its backlog


async def test_a_client_that_does_not_read_is_disconnected(server_factory):
    async with server_factory(send_timeout_s=1.0, max_reply_tokens=8) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        ws = await connect(url(server), sock=sock, max_queue=1)
        update = json.dumps({"type": "session.update", "session": {"instructions": "x" * 8000}})

        async def spam() -> None:
            for _ in range(2000):  # ~16 MB of session.updated back, never read
                await ws.send(update)

        spammer = asyncio.create_task(spam())
        try:
            await sessions_closed(server, 30)
        finally:
            spammer.cancel()
            ws.transport.abort()
        await still_serving(server)


async def test_a_flood_client_that_never_reads_nor_answers_pings_is_closed_in_bounded_time(server_factory):
    # A raw client (the sans-I/O protocol over a bare socket): it floods 25 s μ-law appends, far past the
    # 2x real-time budget, never reads what comes back, and so never answers the keepalive pings.
    settings = {"send_timeout_s": 1.0, "ping_interval_s": 0.5, "max_reply_tokens": 8}
    async with server_factory(**settings) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        protocol = ClientProtocol(parse_uri(url(server)))
        protocol.send_request(protocol.connect())
        writer.write(b"".join(protocol.data_to_send()))
        protocol.receive_data(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
        assert protocol.handshake_exc is None
        while not any(isinstance(e, Frame) for e in protocol.events_received()):  # session.created
            protocol.receive_data(await asyncio.wait_for(reader.read(65536), 10))
        protocol.data_to_send()  # (a pong, had a ping come already: dropped; it never answers one)
        # From here on nothing it receives is ever read.
        noise = ulaw_encode(np.random.default_rng(1).integers(-40, 40, 8000 * 25).astype(np.int16))
        append = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(noise).decode()})
        protocol.send_text(
            json.dumps({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}}).encode()
        )
        (session,) = [s for s in server.sessions if s.ws.remote_address == writer.get_extra_info("sockname")]
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def flood() -> None:
            with contextlib.suppress(OSError):  # until the server cuts the connection
                while not session.closed.is_set():
                    protocol.send_text(append.encode())
                    writer.write(b"".join(protocol.data_to_send()))
                    await writer.drain()

        flooding = asyncio.create_task(flood())
        try:
            # Bound: a ping interval, then a send timeout for the pong, then one for the close handshake.
            await asyncio.wait_for(session.closed.wait(), 30)
        finally:
            flooding.cancel()
            writer.transport.abort()
        assert session.pacer.credit < 0  # it was being throttled when it was cut off
        assert loop.time() - started < 0.5 + 2 * 1.0 + 5.0  # (5 s of margin for a loaded machine)
        await still_serving(server)


async def sessions_closed(server, timeout: float = 60) -> None:
    """Until every session the server holds now has ended (each sets `closed` when its teardown is done)."""
    sessions = list(server.sessions)
    await asyncio.wait_for(asyncio.gather(*(s.closed.wait() for s in sessions)), timeout)


# --- Twilio ---------------------------------------------------------------------------------------------


async def test_twilio_faults_media_before_start_bad_format_nan_marks_after_stop(srv, caplog):
    caplog.set_level(logging.WARNING)
    sid = "MZ" + "0" * 30
    good_start = {
        "event": "start",
        "streamSid": sid,
        "start": {"streamSid": sid, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
    }
    media = {"event": "media", "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}
    async with connect(url(srv, "/twilio")) as phone:
        await phone.send(json.dumps(media))  # before start
        await phone.send(json.dumps({**good_start, "start": {"mediaFormat": [1]}}))
        await phone.send(json.dumps({**good_start, "start": {"mediaFormat": {"encoding": "audio/pcm"}}}))
        await phone.send(json.dumps(good_start))
        await phone.send(json.dumps(media))
        await phone.send(json.dumps({"event": "mark", "mark": {"name": "reply_1:NaN"}}))
        await phone.send(json.dumps({"event": "mark", "mark": {"name": "reply_1:inf"}}))
        await phone.send(json.dumps({"event": "mark", "mark": {"name": ["x"]}}))
        await phone.send(json.dumps({"event": "stop"}))
        with pytest.raises(ConnectionClosed):
            for _ in range(10):  # messages after stop: the server has closed the stream
                await phone.send(json.dumps(media))
                await asyncio.wait_for(phone.recv(), 10)
        assert phone.close_code == 1000
    warnings = [r.getMessage() for r in caplog.records if r.name == "app.server.twilio"]
    assert any("before `start`" in w for w in warnings) and any("media format" in w for w in warnings)
    assert any("bad position" in w for w in warnings)
    assert not tracebacks(caplog)
    await still_serving(srv)


async def test_a_server_closing_leaves_the_heap_of_one_still_running_frozen(srv, server_factory):
    # The collection after every session is cheap only while the models' objects are frozen out of it;
    # another server in the same process (tests run them nested) must not thaw them when it closes.
    frozen = gc.get_freeze_count()
    assert frozen > 0
    async with server_factory(max_reply_tokens=8):
        pass
    assert gc.get_freeze_count() >= frozen


# --- vanishing clients, memory ----------------------------------------------------------------------------


async def server_session(server, ws):
    """The server's side of client connection `ws`."""
    (session,) = [s for s in server.sessions if s.ws.remote_address == ws.local_address]
    return session


async def at_most_at_once(server, limit: int, jobs) -> None:
    """Run the client coroutines `jobs(slot)` with at most `limit` connections open on the server at any
    moment: a slot is given back only once the server has torn the previous session down (so the
    per-address cap is reached, never passed)."""
    slots = asyncio.Semaphore(limit)

    async def guarded(job) -> None:
        async with slots:
            session = await job
            if session is not None:
                await asyncio.wait_for(session.closed.wait(), 60)

    await asyncio.gather(*(guarded(job) for job in jobs))


async def test_clients_killed_mid_reply_at_random_points_free_everything(srv):
    rng = random.Random(11)

    async def victim(stop_after: int):
        ws = await connect(url(srv))
        await until(ws, "session.created")
        session = await server_session(srv, ws)
        await ws.send(user_text("Say hi."))  # a short reply (the module's server: 8 tokens at most)
        await ws.send(CREATE)
        for _ in range(stop_after):
            await asyncio.wait_for(ws.recv(), 60)
        ws.transport.abort()  # no close frame
        return session

    # 50 kills, as many at once as one address may hold, each after a random number of reply events
    # (0: before the reply started; up to 14: somewhere in its audio, or just after it ended).
    await at_most_at_once(
        srv, srv.config.max_sessions_per_client, [victim(rng.randrange(0, 15)) for _ in range(50)]
    )
    await sessions_closed(srv)
    assert not srv.sessions
    for lane in (srv.assistant.lanes.asr, srv.assistant.lanes.llm, srv.assistant.lanes.tts):
        assert not lane._pending, lane.name  # nothing of theirs is left queued on the models
    await still_serving(srv)


# The 500 sessions, at up to the per-address cap at once. Each allocates what a real one does (its
# conversation: an LLM session with its KV cache, a VAD stream, a synthesizer), applies a session.update,
# and every TEXT_TURN_EVERY-th one also answers a short question (replies, transcripts, the reply stream).
SESSIONS_FOR_RSS = 500
TEXT_TURN_EVERY = 25


def settled_rss() -> int:
    """RSS once freed memory has been handed back: a collection, then glibc's malloc_trim (its pools keep
    freed pages, which moved RSS by ±100 MB between identical batches here). A leak survives both."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: plain RSS
        ctypes.CDLL(None).malloc_trim(0)
    return psutil.Process().memory_info().rss


async def test_rss_is_flat_over_500_sessions(srv):
    async def one_session(i: int, text_turn: bool):
        async with connect(url(srv)) as ws:
            await until(ws, "session.created")
            session = await server_session(srv, ws)
            turn_detection = {"type": "server_vad", "silence_duration_ms": 300 + 100 * (i % 7)}
            await ws.send(
                json.dumps({"type": "session.update", "session": {"turn_detection": turn_detection}})
            )
            await until(ws, "session.updated")
            if text_turn:
                assert (await ask(ws, "Say hi."))["response"]["status"] == "completed"
        return session

    cap = srv.config.max_sessions_per_client
    # Warm-up before the baseline: as many replies at once as can ever run here, then plain sessions.
    await at_most_at_once(srv, cap, [one_session(i, True) for i in range(cap)])
    await at_most_at_once(srv, cap, [one_session(i, False) for i in range(4 * cap)])
    before = settled_rss()
    total = srv.total_sessions
    sessions = [one_session(i, i % TEXT_TURN_EVERY == 0) for i in range(SESSIONS_FOR_RSS)]
    await at_most_at_once(srv, cap, sessions)
    assert srv.total_sessions - total == SESSIONS_FOR_RSS and not srv.sessions
    grown_mb = (settled_rss() - before) / 2**20
    assert grown_mb < 40, f"RSS grew {grown_mb:.0f} MB over {SESSIONS_FOR_RSS} sessions"
    await still_serving(srv)
