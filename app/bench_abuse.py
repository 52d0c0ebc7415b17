"""`specvoice bench serve --abuse`: N normal clients with and without a flood client beside them.

The normal clients stream the spoken question in real time, as in the plain bench (end of question audio →
first reply audio). The flood client sends μ-law appends of 25 s of speech back to back, as fast as the
socket takes them (a mic that never stops, far faster than real time), reconnecting if it is closed; every
30th message is an oversized 87 s append, which the server must refuse. Runs alternate (without, with,
without, with...) so that a machine whose load drifts does not favour either side. /healthz is probed
during both kinds of run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import numpy as np

from app.bench_serve import _one_level, percentile


async def _flood(url: str, speech_8k: np.ndarray, stop: asyncio.Event, stats: dict[str, int]) -> None:
    from websockets.asyncio.client import connect

    from app.server.codecs import ulaw_encode

    def append(seconds: float) -> str:
        reps = int(np.ceil(seconds * 8000 / len(speech_8k)))
        pcm = np.tile(speech_8k, reps)[: int(seconds * 8000)]
        audio = base64.b64encode(ulaw_encode(pcm)).decode()
        return json.dumps({"type": "input_audio_buffer.append", "audio": audio})

    normal, oversized = append(25.0), append(87.0)
    while not stop.is_set():
        try:
            async with connect(url, max_size=None) as ws:
                stats["connections"] += 1
                await ws.send(json.dumps({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}}))

                async def drain() -> None:
                    async for _ in ws:  # read everything, so only the input side is abusive
                        stats["events"] += 1

                reader = asyncio.create_task(drain())
                try:
                    while not stop.is_set():
                        stats["messages"] += 1
                        await ws.send(oversized if stats["messages"] % 30 == 0 else normal)
                finally:
                    reader.cancel()
        except Exception:
            stats["closed"] += 1
            await asyncio.sleep(0.2)  # (reconnect pause)


async def _health_probe(port: int, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        out.append(1000.0 * (time.perf_counter() - started))
        writer.close()
        await asyncio.sleep(0.25)  # (probe interval)


async def run_abuse(url: str, port: int, clients: int, rounds: int, audio_24k: np.ndarray) -> dict[str, Any]:
    from app.audio import resample

    speech_8k = np.asarray(resample(audio_24k.astype(np.float32) / 32768.0, 24000, 8000) * 32767, np.int16)
    await _one_level(url, 1, 1, audio_24k)  # warm-up
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    health: dict[str, list[float]] = {"without": [], "with": []}
    flood_stats = {"connections": 0, "messages": 0, "events": 0, "closed": 0}
    for _ in range(rounds):
        for kind in ("without", "with"):
            stop = asyncio.Event()
            helpers = [asyncio.create_task(_health_probe(port, stop, health[kind]))]
            if kind == "with":
                helpers.append(asyncio.create_task(_flood(url, speech_8k, stop, flood_stats)))
            try:
                runs[kind].append(await _one_level(url, clients, 1, audio_24k))
            finally:
                stop.set()
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
            level = runs[kind][-1]
            print(f"  {kind} flood: p50 {level['p50_ms']} ms, p95 {level['p95_ms']} ms, errors {level['errors']}")
    report: dict[str, Any] = {"clients": clients, "rounds": rounds, "flood": flood_stats}
    for kind, levels in runs.items():
        # per-turn latencies are not kept by _one_level; pool the per-run medians and p95s
        p50s = [lv["p50_ms"] for lv in levels if lv["p50_ms"] is not None]
        p95s = [lv["p95_ms"] for lv in levels if lv["p95_ms"] is not None]
        report[kind] = {
            "p50_ms": percentile(p50s, 50),
            "p95_ms": percentile(p95s, 50),
            "p95_ms_spread": [min(p95s, default=None), max(p95s, default=None)],
            "turns": sum(lv["turns"] for lv in levels),
            "errors": sum(lv["errors"] for lv in levels),
            "healthz_p50_ms": percentile(health[kind], 50),
            "healthz_max_ms": max(health[kind], default=None),
        }
    base, flooded = report["without"]["p95_ms"], report["with"]["p95_ms"]
    report["p95_rise_pct"] = round(100.0 * (flooded - base) / base, 1) if base and flooded else None
    return report


def print_table(report: dict[str, Any]) -> None:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    print(f"\n{'':>14} {'p50 ms':>8} {'p95 ms':>8} {'turns':>6} {'errors':>7} {'healthz p50/max ms':>19}")
    for kind in ("without", "with"):
        r = report[kind]
        health = f"{fmt(r['healthz_p50_ms'])}/{fmt(r['healthz_max_ms'])}"
        print(
            f"{kind + ' flood':>14} {fmt(r['p50_ms']):>8} {fmt(r['p95_ms']):>8} {r['turns']:>6} {r['errors']:>7} "
            f"{health:>19}"
        )
    print(f"p95 rise under the flood: {report['p95_rise_pct']} % (goal < 25 %); flood: {report['flood']}")
