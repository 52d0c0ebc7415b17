"""`specvoice bench serve`: the server under concurrent load, measured from the outside like a client would.

It starts `specvoice serve` as a separate process (so its RSS is the server's alone), then:
1. for N = 1, 2, 4, 8 concurrent simulated clients, each streams a spoken question in real time (20 ms chunks)
   and measures end of the question's audio → first reply audio; p50/p95 per N, and errors (failed
   connections, error events, replies that are not `completed` or have no audio);
2. server RSS before and after M sequential short sessions (default 200): each connects, asks a text question,
   waits for the first reply audio, cancels the reply and disconnects; this is the teardown path that leaks
   if anything does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
QUESTION = Path(__file__).resolve().parent.parent / "assets" / "question.wav"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="N = 1, 2 and 20 sequential sessions (a smoke run)"
    )
    parser.add_argument("--levels", default="1,2,4,8", help="concurrent clients per level (default 1,2,4,8)")
    parser.add_argument("--rounds", type=int, default=2, help="questions per client per level (default 2)")
    parser.add_argument("--sequential", type=int, default=200, help="sequential sessions for the RSS check")
    parser.add_argument("--question", default=str(QUESTION), help="spoken question to stream")
    parser.add_argument("--url", help="bench an already running server instead of starting one (no RSS then)")
    parser.add_argument(
        "--abuse",
        action="store_true",
        help="instead: N normal clients with and without a flood client beside them (bench/abuse.py)",
    )
    parser.add_argument("--clients", type=int, default=2, help="--abuse: normal clients (default 2)")
    parser.add_argument("--llm-url", help="the started server uses this remote OpenAI-compatible LLM "
                        "(llm.backend=openai; key from SPECVOICE_LLM_API_KEY; docs/scaling.md)")  # fmt: skip
    parser.add_argument("--llm-model", default="specvoice", help="the remote LLM's model name (with --llm-url)")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.array(values), q))


def _server_command(args: argparse.Namespace, max_sessions: int) -> list[str]:
    cmd = [sys.executable, "-m", "app.cli"]
    for flag in ("config", "profile", "device", "dtype"):
        value = getattr(args, flag, None)
        if value:
            cmd += [f"--{flag.replace('_', '-')}", value]
    for item in getattr(args, "set", []) or []:
        cmd += ["--set", item]
    if getattr(args, "llm_url", None):
        cmd += ["--set", "llm.backend=openai", "--set", f"llm.base_url={args.llm_url}",
                "--set", f"llm.model={args.llm_model}"]  # fmt: skip
    cmd += ["--set", f"server.max_sessions_per_client={max_sessions}"]  # every client is on loopback
    return cmd + ["serve", "--port", "0", "--max-sessions", str(max_sessions)]


class ServerProcess:
    """`specvoice serve` in a child process; knows its port and its RSS."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.output: collections.deque[str] = collections.deque(maxlen=200)  # the server's last log lines

    def start(self, timeout: float = 600.0) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            match = re.search(r"listening on \S+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                # Keep reading its output: a full pipe would block the server's logging, and so the server.
                threading.Thread(target=self._drain, daemon=True).start()
                return
            if time.monotonic() > deadline:
                break
        raise RuntimeError(
            f"the server did not start (exit code {self.proc.poll()}): {''.join(self.output)[-2000:]}"
        )

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def rss_mb(self) -> float:
        import psutil

        assert self.proc is not None
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def spoken_turns(
    url: str, clients: int, turns: int, audio: np.ndarray
) -> tuple[list[float], list[str]]:
    """`clients` concurrent Realtime clients, each streaming `audio` in real time `turns` times: every
    completed turn's end of speech → first audio (ms), and what went wrong."""
    from app.commands.client import converse

    latencies: list[float] = []
    errors: list[str] = []

    async def client(index: int) -> None:
        for _ in range(turns):
            try:
                result = await converse(url, audio=audio, realtime=True, timeout=120)
            except Exception as exc:
                errors.append(f"client {index}: {type(exc).__name__}: {exc}")
                log.info("client %d failed", index, exc_info=True)
                continue
            errors.extend(f"client {index}: {m}" for m in result.errors)
            if result.status != "completed" or not result.reply_audio.size or result.first_audio_ms is None:
                errors.append(f"client {index}: reply {result.status or 'missing'}")
            else:
                latencies.append(result.first_audio_ms)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, errors


async def _one_level(url: str, sessions: int, rounds: int, audio: np.ndarray) -> dict[str, Any]:
    started = time.perf_counter()
    latencies, errors = await spoken_turns(url, sessions, rounds, audio)
    return {
        "sessions": sessions,
        "turns": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "mean_ms": statistics.fmean(latencies) if latencies else None,
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": round(time.perf_counter() - started, 2),
    }


async def _short_session(url: str) -> bool:
    """Connect, ask in text, wait for the first reply audio, cancel, disconnect."""
    from websockets.asyncio.client import connect

    from app.commands.client import user_text_event

    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps(user_text_event("Say hello.")))
        await ws.send(json.dumps({"type": "response.create"}))
        cancelled = False
        async for raw in ws:
            kind = json.loads(raw).get("type")
            if kind == "response.output_audio.delta" and not cancelled:
                cancelled = True
                await ws.send(json.dumps({"type": "response.cancel"}))
            elif kind == "response.done":
                return True
    return False


async def _bench(args: argparse.Namespace, url: str, server: ServerProcess | None) -> dict[str, Any]:
    from app.audio import read_audio, to_int16

    audio = to_int16(read_audio(args.question, rate=24000))
    levels = [1, 2] if args.quick else [int(n) for n in args.levels.split(",") if n.strip()]
    rounds = 1 if args.quick else args.rounds
    sequential = 20 if args.quick else args.sequential
    await _one_level(url, 1, 1, audio)  # warm-up: first-call costs are not latency
    results = []
    for n in levels:
        before = await asyncio.to_thread(_server_counters, url, server)
        level = await _one_level(url, n, rounds, audio)
        after = await asyncio.to_thread(_server_counters, url, server)
        level.update(_load_report(before, after))
        results.append(level)
        print(
            f"  N={n}: p50 {_fmt(level['p50_ms'])} ms, p95 {_fmt(level['p95_ms'])} ms, "
            f"errors {level['errors']}, LLM {_fmt(level.get('llm_tok_s'))} tok/s, "
            f"CPU {_fmt(level.get('cpu_cores'), '.2f')} cores, queued: {_fmt_waits(level.get('lane_wait_ms'))}",
            flush=True,
        )
    rss_before = server.rss_mb() if server else None
    failures = 0
    started = time.perf_counter()
    for _ in range(sequential):
        try:
            ok = await asyncio.wait_for(_short_session(url), 60)
        except Exception:
            ok = False
        failures += not ok
    seq_wall = time.perf_counter() - started
    rss_after = server.rss_mb() if server else None
    return {
        "levels": results,
        "rss_mb_before": round(rss_before, 1) if rss_before is not None else None,
        "rss_mb_after": round(rss_after, 1) if rss_after is not None else None,
        "sequential_sessions": sequential,
        "sequential_failures": failures,
        "sequential_wall_s": round(seq_wall, 1),
        "sequential_session_kind": "text question, first reply audio, response.cancel, disconnect",
        "question": Path(args.question).name,
        "question_s": round(len(audio) / 24000, 2),
        "latency_definition": "end of the question's audio sent (real-time pacing) -> first reply audio received",
        "quick": bool(args.quick),
        "llm": getattr(args, "llm_url", None) or "local",
        "load_definition": "llm_tok_s: reply tokens handed out by the LLM lane / level wall time, all sessions; "
                           "cpu_cores: server CPU seconds / wall; lane_wait_ms: mean queue wait per call "
                           "(asr, llm, tts lanes; llm_steps: per batched reply step; asr_urgent: final "
                           "decodes only; tts_urgent: replies' first pieces only)",
    }


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _server_counters(url: str, server: ServerProcess | None) -> dict[str, Any]:
    """The server's lane counters (`/healthz` "lanes", app/batch_lane.py) and its CPU seconds, now."""
    from urllib.parse import urlsplit
    from urllib.request import urlopen

    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    out: dict[str, Any] = {"at": time.perf_counter(), "lanes": None, "cpu_s": None}
    try:
        with urlopen(f"{scheme}://{parts.netloc}/healthz", timeout=10) as response:
            out["lanes"] = json.loads(response.read()).get("lanes")
    except Exception as exc:  # an older server, or a token we do not have: no lane report
        log.info("no lane counters from /healthz: %s", exc)
    if server is not None and server.proc is not None:
        import psutil

        times = psutil.Process(server.proc.pid).cpu_times()
        out["cpu_s"] = times.user + times.system + times.children_user + times.children_system
    return out


def _load_report(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per level, from counter differences: summed LLM tokens/s, server CPU (cores busy on average) and
    the mean queue wait per call of each lane (which stage queued)."""
    wall = after["at"] - before["at"]
    report: dict[str, Any] = {"wall_with_counters_s": round(wall, 2)}
    if before["cpu_s"] is not None and after["cpu_s"] is not None and wall > 0:
        import psutil

        cores = (after["cpu_s"] - before["cpu_s"]) / wall
        report["cpu_cores"] = round(cores, 2)
        report["cpu_percent_of_machine"] = round(100 * cores / (psutil.cpu_count() or 1), 1)
    a, b = after.get("lanes") or {}, before.get("lanes") or {}
    waits: dict[str, float | None] = {}
    for name in ("asr", "llm", "tts", "llm_steps", "asr_urgent", "tts_urgent"):
        if name in a and name in b:
            calls = a[name]["calls"] - b[name]["calls"]
            waits[name] = round(1000 * (a[name]["wait_s"] - b[name]["wait_s"]) / calls, 1) if calls else None
            report[f"{name}_busy_s"] = round(a[name]["busy_s"] - b[name]["busy_s"], 2)
    if waits:
        report["lane_wait_ms"] = waits  # mean per call; llm_steps: per reply step (batched lane)
    if "llm_steps" in a and "llm_steps" in b and wall > 0:
        report["llm_tok_s"] = round((a["llm_steps"]["tokens"] - b["llm_steps"]["tokens"]) / wall, 1)
        report["llm_mean_rows_recent"] = a["llm_steps"].get("recent_mean_rows")
    return report


def _fmt_waits(waits: dict[str, float | None] | None) -> str:
    if not waits:
        return "-"
    return ", ".join(f"{name} {_fmt(ms, '.0f')} ms" for name, ms in waits.items())


def run(args: argparse.Namespace, config) -> int:
    server = None
    url = args.url
    if url is not None and getattr(args, "llm_url", None):
        print("bench serve: --llm-url configures the server it starts; not with --url", file=sys.stderr)
        return 2
    if url is None:
        max_sessions = max([8, *[int(n) for n in args.levels.split(",") if n.strip()]]) + 2
        server = ServerProcess(_server_command(args, max_sessions))
        print("starting the server (loading models)...", flush=True)
        try:
            server.start()
        except RuntimeError as exc:
            server.stop()
            print(f"bench serve: {exc}", file=sys.stderr)
            return 1
        url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    if args.abuse:
        return _run_abuse(args, url, server)
    try:
        report = asyncio.run(_bench(args, url, server))
    finally:
        if server is not None:
            server.stop()
    print()
    print(f"{'sessions':>8} {'turns':>6} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7} {'LLM tok/s':>9} "
          f"{'CPU cores':>9}  mean queue wait per call (ms)")  # fmt: skip
    for level in report["levels"]:
        print(
            f"{level['sessions']:>8} {level['turns']:>6} {_fmt(level['p50_ms']):>8} {_fmt(level['p95_ms']):>8} "
            f"{level['errors']:>7} {_fmt(level.get('llm_tok_s'), '.1f'):>9} "
            f"{_fmt(level.get('cpu_cores'), '.2f'):>9}  {_fmt_waits(level.get('lane_wait_ms'))}"
        )
    for level in report["levels"]:
        for sample in level["error_samples"]:
            print(f"  N={level['sessions']} error: {sample}")
    if report["rss_mb_before"] is not None:
        print(
            f"server RSS {report['rss_mb_before']:.0f} MB before and {report['rss_mb_after']:.0f} MB after "
            f"{report['sequential_sessions']} sequential sessions ({report['sequential_failures']} failed)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _run_abuse(args: argparse.Namespace, url: str, server: ServerProcess | None) -> int:
    from urllib.parse import urlsplit

    from app.audio import read_audio, to_int16
    from bench.abuse import print_table, run_abuse

    audio = to_int16(read_audio(args.question, rate=24000))
    rounds = 1 if args.quick else args.rounds
    try:
        report = asyncio.run(run_abuse(url, urlsplit(url).port or 80, args.clients, rounds, audio))
    finally:
        if server is not None:
            server.stop()
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
