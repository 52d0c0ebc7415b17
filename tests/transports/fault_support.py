"""Helpers of the fault campaign (test_faults.py): raw HTTP, a health probe, a fresh client's text turn."""

from __future__ import annotations

import asyncio
import json
import time

from websockets.asyncio.client import connect


async def raw_http(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes as one HTTP request and read the whole response (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), timeout)
        return status, headers, body
    finally:
        writer.close()


def get(path: str, port: int, host: str | None = None, **headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def health_ms(port: int, **headers: str) -> float:
    """Milliseconds for /healthz to answer: the median of three probes (one GC pause is not the server)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        status, _, body = await raw_http(port, get("/healthz", port, **headers))
        times.append(1000.0 * (time.perf_counter() - started))
        assert status == 200 and json.loads(body)["status"] == "ok"
    return sorted(times)[1]


async def until(ws, kind: str, collect: list[dict] | None = None, timeout: float = 120) -> dict:
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if collect is not None:
            collect.append(event)
        if event["type"] == kind:
            return event


def user_text(text: str) -> str:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return json.dumps({"type": "conversation.item.create", "item": item})


CREATE = json.dumps({"type": "response.create"})


async def ask(ws, text: str = "Say hello.") -> dict:
    """One text turn on an open session; returns the final response.done event."""
    await ws.send(user_text(text))
    await ws.send(CREATE)
    return await until(ws, "response.done")


async def fresh_turn_completes(port: int, **connect_kwargs) -> None:
    async with connect(f"ws://127.0.0.1:{port}/v1/realtime", **connect_kwargs) as ws:
        await until(ws, "session.created")
        done = await ask(ws)
        assert done["response"]["status"] == "completed", done


async def still_serving(server, **connect_kwargs) -> None:
    """What every fault case ends with: /healthz within 100 ms, and a new client's text turn completes."""
    assert await health_ms(server.port) < 100.0
    await fresh_turn_completes(server.port, **connect_kwargs)
