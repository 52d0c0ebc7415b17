"""Batched vs sequential decoding of N concurrent replies (llm/batch.py), in one run on one engine.

For each N: N sessions (distinct prompts from `bench.llm.PROMPTS`, prefilled first, not timed) reply with
up to `max_tokens` tokens each, greedy,
- sequential: one reply step per forward, round-robin over the sessions — what the one-call-at-a-time
  LLM lane did with N conversations replying at once;
- batched: one `BatchScheduler` forward per step for every live reply.
Reported: summed tokens/s (all replies' tokens / wall time), both ways, interleaved per repeat so load
changes hit both; and the cost of one batched forward vs the number of rows in it (decode forwards only),
plus a synthetic sweep: B 1-token rows at position ~200 (`forward_cost_ms`).
Run it through `scripts/bench_batch.py` (loads the engine as the product does).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any

import torch

from bench.llm import PROMPTS
from llm.batch import BatchScheduler
from llm.engine import Engine
from llm.session import Session


def _sessions(engine: Engine, n: int, offset: int, system: str) -> list[Session]:
    sessions = []
    for i in range(n):
        session = Session(engine, system_prompt=system, max_context=1024)
        session.add_turn(PROMPTS[(offset + i) % len(PROMPTS)])  # closes the turn: prefilled here, untimed
        sessions.append(session)
    return sessions


def sequential(engine: Engine, n: int, max_tokens: int, offset: int, system: str) -> tuple[int, float]:
    """Round-robin, one step per forward. Returns (tokens, seconds)."""
    sessions = _sessions(engine, n, offset, system)
    gens = [s.generate(max_tokens=max_tokens) for s in sessions]
    tokens, started = 0, time.perf_counter()
    while gens:
        for gen in list(gens):
            delta = next(gen, None)
            if delta is None:
                gens.remove(gen)
            else:
                tokens += len(delta.token_ids)
    return tokens, time.perf_counter() - started


def batched(engine: Engine, n: int, max_tokens: int, offset: int, system: str
            ) -> tuple[int, float, BatchScheduler]:  # fmt: skip
    sessions = _sessions(engine, n, offset, system)
    scheduler = BatchScheduler(engine.target)
    for s in sessions:
        scheduler.add(s.generate(max_tokens=max_tokens))
    tokens, started = 0, time.perf_counter()
    while scheduler.live:
        for outcome in scheduler.step().values():
            tokens += len(outcome.delta.token_ids) if outcome.delta else 0
    return tokens, time.perf_counter() - started, scheduler


def forward_cost_ms(model, batch_sizes: list[int], position: int = 200, repeats: int = 7) -> dict[int, float]:
    """Median ms of one forward of B 1-token rows (each its own cache, at `position`)."""
    from llm.model import BatchRow

    out = {}
    caches = [model.new_cache(position + 8) for _ in range(max(batch_sizes))]
    for b in batch_sizes:
        times = []
        for _ in range(repeats + 1):
            rows = [BatchRow([7 + i], caches[i], position, logits="last") for i in range(b)]
            started = time.perf_counter()
            model.forward_batch(rows)
            times.append(time.perf_counter() - started)
        out[b] = round(1000 * statistics.median(times[1:]), 1)
    return out


def measure(engine: Engine, levels: list[int], max_tokens: int, repeats: int, system: str) -> dict[str, Any]:
    results = []
    for n in levels:
        seq_rates, bat_rates, per_rows = [], [], defaultdict(list)
        for r in range(repeats):
            offset = 8 * r + n  # different prompts per repeat; the same for both ways within a repeat
            with torch.inference_mode():
                tokens_b, seconds_b, scheduler = batched(engine, n, max_tokens, offset, system)
                tokens_s, seconds_s = sequential(engine, n, max_tokens, offset, system)
            seq_rates.append(tokens_s / seconds_s)
            bat_rates.append(tokens_b / seconds_b)
            for f in scheduler.forwards:
                if not f.prefill_rows:
                    per_rows[f.rows].append(1000 * f.seconds)
        results.append({
            "sessions": n,
            "sequential_tok_s": _spread(seq_rates),
            "batched_tok_s": _spread(bat_rates),
            "speedup": round(statistics.median(bat_rates) / statistics.median(seq_rates), 2),
            "decode_forward_ms_by_rows": {b: round(statistics.median(v), 1) for b, v in sorted(per_rows.items())},
        })  # fmt: skip
    base = statistics.median(_raw(results[0]["batched_tok_s"])) if levels and levels[0] == 1 else None
    for level in results:
        if base:
            level["batched_vs_n1"] = round(level["batched_tok_s"]["median"] / base, 2)
    return {
        "levels": results,
        "forward_cost_ms": forward_cost_ms(engine.target, [1, 2, 4, 8, 16]),
        "max_tokens": max_tokens,
        "repeats": repeats,
        "drafter": engine.drafter_name,
        "k_range": [engine.k_min, engine.k_max],
        "threads": torch.get_num_threads(),
        "dtype": str(engine.target.dtype),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1),
            "max": round(max(values), 1), "all": [round(v, 1) for v in values]}  # fmt: skip


def _raw(spread: dict[str, Any]) -> list[float]:
    return spread["all"]


def table(report: dict[str, Any]) -> str:
    lines = [f"drafter {report['drafter']} k {report['k_range']}, {report['dtype']}, {report['threads']} thread(s), "
             f"{report['max_tokens']} tokens per reply, {report['repeats']} repeats (min/median/max)",
             f"{'N':>3} {'sequential tok/s':>22} {'batched tok/s':>22} {'speedup':>8} {'vs N=1':>7}"]  # fmt: skip
    for level in report["levels"]:
        s, b = level["sequential_tok_s"], level["batched_tok_s"]
        lines.append(
            f"{level['sessions']:>3} {s['min']:>6.1f}/{s['median']:>6.1f}/{s['max']:>6.1f} "
            f"{b['min']:>8.1f}/{b['median']:>6.1f}/{b['max']:>6.1f} {level['speedup']:>8.2f} "
            f"{level.get('batched_vs_n1', 0):>7.2f}"
        )
    lines.append("one forward of B 1-token rows at position 200 (ms): "
                 + ", ".join(f"B={b}: {ms}" for b, ms in report["forward_cost_ms"].items()))  # fmt: skip
    for level in report["levels"]:
        lines.append(f"  N={level['sessions']} decode forward ms by rows in it: {level['decode_forward_ms_by_rows']}")
    return "\n".join(lines)
