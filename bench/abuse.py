"""`specvoice bench serve --abuse`: N normal clients with and without a flood client beside them.

The normal clients stream the spoken question in real time, as in the plain bench (end of question audio →
first reply audio), `turns` questions each per run. The flood client sends μ-law appends of 25 s of speech
back to back, as fast as the socket takes them (a mic that never stops, far faster than real time),
reconnecting if it is closed; every 30th message is an oversized 87 s append, which the server must refuse.

Statistics: `rounds` pairs of runs, in ABBA order (without, with, with, without, ...), so that a machine
whose load drifts favours neither side; every turn's latency is kept, p50/p95 are over all turns of a side,
and the spread is reported three ways: per-run p95s, and a bootstrap 90 % interval of the p95 rise (turns
resampled within each side). `/healthz` is probed during every run (its latency is the server's event-loop
lag), and the server's lane counters (queue wait per call and per reply step) are read before and after
each run, so a rise can be traced to a stage. The machine's load average is recorded with the numbers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

FLOOD_APPEND_S = 25.0
OVERSIZED_APPEND_S = 87.0
BOOTSTRAP_SAMPLES = 2000


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


async def _flood(url: str, speech_8k: np.ndarray, stop: asyncio.Event, stats: dict[str, int]) -> None:
    from websockets.asyncio.client import connect

    from app.server.codecs import ulaw_encode

    def append(seconds: float) -> str:
        reps = int(np.ceil(seconds * 8000 / len(speech_8k)))
        pcm = np.tile(speech_8k, reps)[: int(seconds * 8000)]
        audio = base64.b64encode(ulaw_encode(pcm)).decode()
        return json.dumps({"type": "input_audio_buffer.append", "audio": audio})

    normal, oversized = append(FLOOD_APPEND_S), append(OVERSIZED_APPEND_S)
    while not stop.is_set():
        try:
            async with connect(url, max_size=None) as ws:
                stats["connections"] += 1
                await ws.send(
                    json.dumps({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}})
                )

                async def drain() -> None:
                    async for raw in ws:  # read everything, so only the input side is abusive
                        stats["events"] += 1
                        if json.loads(raw).get("type") == "error":
                            stats["errors"] += 1

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


def _lanes(url: str) -> dict[str, Any]:
    """The server's lane counters from /healthz (empty when it has none, or wants a token)."""
    from urllib.request import urlopen

    parts = urlsplit(url)
    try:
        with urlopen(f"http://{parts.netloc}/healthz", timeout=10) as response:
            return json.loads(response.read()).get("lanes") or {}
    except Exception:
        return {}


def _lane_waits(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[float]]:
    """Per lane: [calls, seconds waited, seconds busy] during one run (counter differences)."""
    out = {}
    for name, counters in after.items():
        if name in before and all(k in counters for k in ("calls", "wait_s", "busy_s")):
            out[name] = [counters[k] - before[name][k] for k in ("calls", "wait_s", "busy_s")]
    return out


async def _flood_running(stats: dict[str, int], stop: asyncio.Event) -> None:
    """Until the flood has sent past its burst budget (so the server is throttling it when turns start)."""
    while stats["messages"] < 2 and not stop.is_set():
        await asyncio.sleep(0.05)


def _bootstrap_rise(without: list[float], with_: list[float], seed: int = 0) -> list[float] | None:
    """90 % interval of the p95 rise (%), turns resampled with replacement within each side."""
    if len(without) < 2 or len(with_) < 2:
        return None
    rng = np.random.default_rng(seed)
    a, b = np.asarray(without), np.asarray(with_)
    base = np.percentile(rng.choice(a, (BOOTSTRAP_SAMPLES, a.size)), 95, axis=1)
    flooded = np.percentile(rng.choice(b, (BOOTSTRAP_SAMPLES, b.size)), 95, axis=1)
    rises = 100.0 * (flooded - base) / base
    return [round(float(np.percentile(rises, 5)), 1), round(float(np.percentile(rises, 95)), 1)]


async def run_abuse(
    url: str, port: int, clients: int, rounds: int, audio_24k: np.ndarray, turns: int = 2
) -> dict[str, Any]:
    from app.audio import resample
    from bench.serve import spoken_turns

    speech_8k = np.asarray(resample(audio_24k.astype(np.float32) / 32768.0, 24000, 8000) * 32767, np.int16)
    load_before = os.getloadavg()
    await spoken_turns(url, 1, 1, audio_24k)  # warm-up: first-call costs are not latency
    sides = ("without", "with")
    latencies: dict[str, list[float]] = {s: [] for s in sides}
    run_p95s: dict[str, list[float]] = {s: [] for s in sides}
    errors: dict[str, list[str]] = {s: [] for s in sides}
    health: dict[str, list[float]] = {s: [] for s in sides}
    lanes: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
    flood_stats = {"connections": 0, "messages": 0, "events": 0, "errors": 0, "closed": 0}
    for r in range(rounds):
        for kind in sides if r % 2 == 0 else sides[::-1]:  # ABBA
            stop = asyncio.Event()
            helpers = [asyncio.create_task(_health_probe(port, stop, health[kind]))]
            if kind == "with":
                flood_stats["messages"] = 0
                helpers.append(asyncio.create_task(_flood(url, speech_8k, stop, flood_stats)))
                await asyncio.wait_for(_flood_running(flood_stats, stop), 60)
            lanes_before = await asyncio.to_thread(_lanes, url)
            try:
                turn_ms, run_errors = await spoken_turns(url, clients, turns, audio_24k)
            finally:
                stop.set()
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
            for name, values in _lane_waits(lanes_before, await asyncio.to_thread(_lanes, url)).items():
                total = lanes[kind].setdefault(name, [0.0, 0.0, 0.0])
                lanes[kind][name] = [t + v for t, v in zip(total, values, strict=True)]
            latencies[kind] += turn_ms
            errors[kind] += run_errors
            if turn_ms:
                run_p95s[kind].append(round(float(np.percentile(turn_ms, 95))))
            print(
                f"  round {r + 1}/{rounds} {kind:>7} flood: p50 {_fmt(percentile(turn_ms, 50))} ms, "
                f"p95 {_fmt(percentile(turn_ms, 95))} ms, errors {len(run_errors)}",
                flush=True,
            )
    report: dict[str, Any] = {
        "clients": clients,
        "rounds": rounds,
        "turns_per_client_per_run": turns,
        "order": "ABBA (without/with alternating)",
        "flood": flood_stats,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    for kind in sides:
        lane_report = {
            name: {
                "calls": int(c),
                "mean_wait_ms": round(1000 * w / c, 1) if c else None,
                "busy_s": round(b, 1),
            }
            for name, (c, w, b) in lanes[kind].items()
        }
        report[kind] = {
            "turns": len(latencies[kind]),
            "p50_ms": _round(percentile(latencies[kind], 50)),
            "p95_ms": _round(percentile(latencies[kind], 95)),
            "min_ms": _round(min(latencies[kind], default=None)),
            "max_ms": _round(max(latencies[kind], default=None)),
            "run_p95s_ms": run_p95s[kind],
            "errors": len(errors[kind]),
            "error_samples": errors[kind][:5],
            "healthz_p50_ms": _round(percentile(health[kind], 50), 1),
            "healthz_p95_ms": _round(percentile(health[kind], 95), 1),
            "healthz_max_ms": _round(max(health[kind], default=None), 1),
            "lanes": lane_report,
            "latencies_ms": [round(x) for x in latencies[kind]],
        }
    base, flooded = report["without"]["p95_ms"], report["with"]["p95_ms"]
    report["p95_rise_pct"] = round(100.0 * (flooded - base) / base, 1) if base and flooded else None
    report["p95_rise_pct_90ci"] = _bootstrap_rise(latencies["without"], latencies["with"])
    b50, f50 = report["without"]["p50_ms"], report["with"]["p50_ms"]
    report["p50_rise_pct"] = round(100.0 * (f50 - b50) / b50, 1) if b50 and f50 else None
    return report


def _round(value: float | None, digits: int = 0) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{report['clients']} normal clients, {report['rounds']} rounds ABBA, "
        f"{report['turns_per_client_per_run']} turns per client per run; load average "
        f"{report['load_average_before']} before, {report['load_average_after']} after ({report['cpu_count']} CPUs)"
    )
    print(f"{'':>14} {'turns':>6} {'p50 ms':>8} {'p95 ms':>8} {'min-max ms':>12} {'per-run p95s':>24} "
          f"{'errors':>7} {'healthz p50/p95/max ms':>23}")  # fmt: skip
    for kind in ("without", "with"):
        r = report[kind]
        spread = f"{_fmt(r['min_ms'])}-{_fmt(r['max_ms'])}"
        runs = ",".join(str(int(x)) for x in r["run_p95s_ms"])
        health = f"{_fmt(r['healthz_p50_ms'])}/{_fmt(r['healthz_p95_ms'])}/{_fmt(r['healthz_max_ms'])}"
        print(
            f"{kind + ' flood':>14} {r['turns']:>6} {_fmt(r['p50_ms']):>8} {_fmt(r['p95_ms']):>8} {spread:>12} "
            f"{runs:>24} {r['errors']:>7} {health:>23}"
        )
    for kind in ("without", "with"):
        waits = ", ".join(
            f"{name} {_fmt(v['mean_wait_ms'])} ms x{v['calls']}" for name, v in report[kind]["lanes"].items()
        )
        print(f"  lane queue wait per call, {kind} flood: {waits or '-'}")
    print(
        f"p95 rise under the flood: {report['p95_rise_pct']} % (90 % bootstrap interval "
        f"{report['p95_rise_pct_90ci']}; goal < 25 %); p50 rise {report['p50_rise_pct']} %; flood: {report['flood']}"
    )
