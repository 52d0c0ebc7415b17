"""Choose the draft head's chain policy (llm/draft_head.py MAX_DRAFT, STOP_BELOW) on the DEVELOPMENT prompts.

    .venv/bin/python scripts/tune_draft_length.py --prompts 16 --max-tokens 32 --repeats 2

Runs the default CPU engine (cpu profile: SmolLM2-135M, bf16 with the Q4_1 file's int4 codes, 1 thread,
greedy, the default system prompt) on `DEV_PROMPTS` (scripts/draft_head_prompts.py: disjoint from the
training prompts and from every bench and test prompt), one fresh session per prompt, for each candidate
(max_draft, stop_below) and for plain decoding, interleaved per repeat so load changes hit every candidate
alike. Reported per candidate: decode tok/s after the prompt's prefill (min/median/max over repeats),
acceptance (accepted / proposed drafts), tokens per verify (the bonus/correction token included), drafts
proposed per verify, and the share of steps that produced one token only. The bench prompts (bench/llm.py) are
never used here: `bench llm` scores the setting chosen on this set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from draft_head_prompts import DEV_PROMPTS  # noqa: E402

DEFAULT_GRID = "4:0,4:0.15,4:0.3,4:0.45,4:0.6,2:0.3,3:0.3,6:0.3"


def load_target(threads: int):
    from app.config import Config
    from app.profiles import resolve_profile
    from app.store import fetch
    from llm.backends import prepare_model, select_backend
    from llm.loading import ensure_hf_folder, load_model

    torch.set_num_threads(threads)
    config = Config()
    profile = resolve_profile(config)
    folder = ensure_hf_folder(fetch(profile.llm, offline=config.models.offline))
    backend = select_backend(config.llm.device, config.llm.dtype, profile=profile.name, role="target")
    target, tokenizer = load_model(folder, dtype=backend.dtype, device="cpu")
    prepare_model(target, backend, quant=config.llm.quant, source=folder)
    return target, tokenizer, config


def verify_costs(target, sizes: range, repeats: int = 5, position: int = 120) -> dict[int, float]:
    """Median ms of a T-row forward (hidden states returned, as the head needs) at `position`, the sizes
    interleaved so load changes hit them alike."""
    cache = target.new_cache(position + max(sizes) + 1)
    target(torch.arange(position) + 100, cache, 0)
    times: dict[int, list[float]] = {T: [] for T in sizes}
    for _ in range(repeats):
        for T in sizes:
            started = time.perf_counter()
            target(torch.arange(T) + 300, cache, position, return_hidden=True)
            times[T].append((time.perf_counter() - started) * 1000)
    return {T: statistics.median(v) for T, v in times.items()}


def run_prompts(engine, system: str, prompts: list[str], max_tokens: int, policy: tuple[int, float] | None,
                min_ngram: int | None = None) -> dict:  # fmt: skip
    """Decode every prompt (fresh session each); records the rows of every verify (1 + drafts). `policy`:
    the head's (max_draft, stop_below); `min_ngram`: an n-gram drafter matching at least that many tokens."""
    from llm.drafters import NgramDrafter
    from llm.session import Session

    seconds = tokens = steps = drafted = accepted = 0
    draft_s = 0.0
    rows: list[int] = []
    for text in prompts:
        session = Session(engine, system_prompt=system, max_context=512)
        if min_ngram is not None:
            session.drafter = NgramDrafter(max(3, min_ngram), min_ngram)
        if policy is not None or min_ngram is not None:
            drafter = session.drafter
            if policy is not None:
                drafter.max_draft, drafter.stop_below = policy
            propose = drafter.propose

            def recorded(*a, _propose=propose, _rows=rows, **kw):
                draft = _propose(*a, **kw)
                _rows.append(1 + len(draft.tokens))
                return draft

            drafter.propose = recorded
        session.extend(text)
        session.end_user_turn()
        started = time.perf_counter()
        for delta in session.generate(max_tokens=max_tokens):
            tokens += len(delta.token_ids)
        seconds += time.perf_counter() - started
        s = session.last_reply
        steps, drafted, accepted = steps + s.steps, drafted + s.drafted, accepted + s.accepted
        draft_s += s.draft_s
        if policy is None and min_ngram is None:
            rows += [1] * s.steps
    return {"seconds": seconds, "tokens": tokens, "steps": steps, "drafted": drafted, "accepted": accepted,
            "draft_s": draft_s, "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=len(DEV_PROMPTS))
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", default=DEFAULT_GRID, help="max_draft:stop_below,... candidates")
    parser.add_argument("--ngram", default="", help="k_max:min_ngram,... n-gram drafter candidates (compared)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--packed-rows", type=int, default=None,
                        help="run forwards of up to this many rows on the int4 codes (default: llm/quant.py's)")
    args = parser.parse_args()

    from llm.draft_head import load_head
    from llm.engine import Engine

    target, tokenizer, config = load_target(args.threads)
    if args.packed_rows:
        from llm.quant import packed_rows_limit

        packed_rows_limit.set(args.packed_rows)
    head = load_head(target)
    spec = Engine(target, tokenizer, drafter_kind="head", draft_head=head, k_min=config.llm.k_min,
                  k_max=config.llm.k_max)  # fmt: skip
    plain = Engine(target, tokenizer, drafter_kind="none", k_min=0, k_max=0)
    prompts = DEV_PROMPTS[: args.prompts]
    system = config.llm.system_prompt
    candidates: dict[str, tuple[Engine, tuple[int, float] | None, int | None]] = {"plain": (plain, None, None)}
    for item in args.grid.split(","):
        k, stop = item.split(":")
        candidates[f"head k<={k} stop<{stop}"] = (spec, (int(k), float(stop)), None)
    for item in filter(None, args.ngram.split(",")):  # the n-gram drafter with short chains, same verifies
        k, n = item.split(":")
        ngram = Engine(target, tokenizer, drafter_kind="ngram", k_min=1, k_max=int(k))
        candidates[f"ngram k<={k} n>={n}"] = (ngram, None, int(n))
    for engine, policy, n in candidates.values():  # warm-up
        run_prompts(engine, system, prompts[:1], 8, policy, n)
    runs: dict[str, list[dict]] = {name: [] for name in candidates}
    for repeat in range(args.repeats):
        for name, (engine, policy, n) in candidates.items():
            runs[name].append(run_prompts(engine, system, prompts, args.max_tokens, policy, n))
            r = runs[name][-1]
            print(f"  repeat {repeat + 1} {name:22s} {r['tokens'] / r['seconds']:6.1f} tok/s", flush=True)
    longest = max([policy[0] for _, policy, _ in candidates.values() if policy]
                  + [engine.k_max for engine, _, n in candidates.values() if n], default=0)  # fmt: skip
    costs = verify_costs(target, range(1, longest + 2))
    print("verify cost (ms, T rows): " + "  ".join(f"T={T}:{ms:.1f}" for T, ms in costs.items()))
    report = {"prompts": len(prompts), "max_tokens": args.max_tokens, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "verify_cost_ms": costs, "candidates": {}}  # fmt: skip
    print(f"\n{'candidate':22s} {'tok/s':>6s} {'(min-max)':>11s} {'model tok/s':>11s} {'accept':>6s} "
          f"{'tok/verify':>10s} {'drafts/verify':>13s} {'draft ms/step':>13s}")  # fmt: skip
    for name, rs in runs.items():
        rates = [r["tokens"] / r["seconds"] for r in rs]
        last = rs[-1]
        steps = max(1, last["steps"])
        # The cost model: every verify at its measured T-row cost, plus the drafting time actually spent.
        modeled_s = sum(costs[T] for T in last["rows"]) / 1000 + last["draft_s"]
        row = {"tokens_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
               "modeled_tokens_per_s": last["tokens"] / modeled_s,
               "acceptance": last["accepted"] / last["drafted"] if last["drafted"] else None,
               "tokens_per_verify": last["tokens"] / steps, "drafts_per_verify": last["drafted"] / steps,
               "draft_ms_per_step": 1000 * last["draft_s"] / steps, "drafted": last["drafted"],
               "accepted": last["accepted"], "steps": last["steps"], "tokens": last["tokens"]}  # fmt: skip
        report["candidates"][name] = row
        accept = "-" if row["acceptance"] is None else f"{row['acceptance']:.2f}"
        print(f"{name:22s} {row['tokens_per_s']:6.1f} {row['min']:5.1f}-{row['max']:<5.1f} "
              f"{row['modeled_tokens_per_s']:11.1f} {accept:>6s} {row['tokens_per_verify']:10.2f} "
              f"{row['drafts_per_verify']:13.2f} {row['draft_ms_per_step']:13.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
