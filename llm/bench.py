"""`specvoice bench llm`: HF generate vs our engine, autoregressive and speculative, same target and prompts.

Methods (one run, same target weights/dtype, same >= 20 short voice-assistant prompts, same max tokens):
  hf_ar        transformers `generate(do_sample=False)`
  engine_ar    our static-cache model, k = 0 (one 1-token forward per token)
  hf_assisted  transformers assisted generation with the same drafter (`prompt_lookup_num_tokens` for the
               n-gram drafter, `assistant_model` for a draft model)
  engine_spec  our speculative engine (adaptive k in [k_min, k_max])

Per method: tokens/s (prefill of the prompt included, as HF generate includes it), tokens per target
forward while generating (the bonus/correction token included; HF's first forward also consumes the
prompt), acceptance rate (ours only: HF does not expose it), time to the first 8 tokens, and whether the
tokens equal hf_ar's. Warm-up first; each figure is the median of `--repeats` runs.

It also measures the cost of a T-token forward of our model in fp32 and bf16 (`verify_cost_ms`): the
speculative engine wants verify sizes whose cost is close to a 1-token step.

Measured here (2-core AMD EPYC with avx512_bf16, SmolLM2-135M, other work sharing the machine), median
ms of a T-token forward of our model at position 200 with ONE intra-op thread:
    fp32  T=1:39  2:62  4:59  8:70  9:78  16:94  17:103   (a 9-token verify costs 2.0x a step)
    bf16  T=1:30  2:28  4:29  8:32  9:33  16:39  17:40    (flat: a 9-token verify costs 1.1x, 17 tokens 1.33x)
With torch's default 2 threads on the busy machine, fp32 M=2..3 matmuls hit a ~16 ms slow path (a whole
forward took 0.3-3.6 s) and every forward was 3-8x slower than with one thread. Hence the recommended CPU
setting: bf16 (the weights are dequantised Q4_1, so bf16 loses nothing that matters), one intra-op thread
(`--threads 1`), the n-gram drafter (the only drafter for SmolLM2-135M: no smaller model shares its
tokenizer), and k in [8, 16] because a wrong draft costs almost nothing when verify cost is flat.
The device/dtype default itself comes from the config/profile and llm.backends; see the report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

PROMPTS = [
    "What is the capital of France?",
    "How many days are there in a leap year?",
    "What is the boiling point of water in Celsius?",
    "Can you tell me a fun fact about octopuses?",
    "How do I make a cup of green tea?",
    "What is the tallest mountain in the world?",
    "Who painted the Mona Lisa?",
    "What is the difference between weather and climate?",
    "Give me a quick tip for staying focused.",
    "How many continents are there?",
    "What is photosynthesis?",
    "Why do cats purr?",
    "What's a good name for a pet goldfish?",
    "How long should I boil pasta?",
    "What is the speed of light?",
    "Tell me a short joke.",
    "What does DNA stand for?",
    "How can I improve my sleep?",
    "What is the largest planet in our solar system?",
    "Remind me what a haiku is.",
    "Which ocean is the biggest?",
    "How do airplanes stay in the air?",
]
VERIFY_SIZES = (1, 2, 3, 4, 5, 6, 8, 9, 12, 16, 17)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompts", type=int, default=20, help=f"how many prompts (default 20, max {len(PROMPTS)})"
    )
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per prompt (default 48)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: the config/profile)")
    parser.add_argument(
        "--drafter", default=None, help="ngram | none | a draft model source (default: profile)"
    )
    parser.add_argument(
        "--skip-verify-costs", action="store_true", help="skip the T-token forward cost table"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the config's llm.threads, 1)")


@dataclass
class Run:
    tokens: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0
    forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    first8: list[float] = field(default_factory=list)

    @property
    def generated(self) -> int:
        return sum(len(t) for t in self.tokens)


class _Clock:
    """Times the first 8 generated tokens of an HF generate call (streamer interface)."""

    def __init__(self) -> None:
        self.started, self.count, self.first8, self.prompt_seen = time.perf_counter(), 0, None, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.count += value.numel()
        if self.first8 is None and self.count >= 8:
            self.first8 = time.perf_counter() - self.started

    def end(self) -> None:
        pass


def _hf_run(hf_model, prompts, max_tokens, eos, **assist) -> Run:
    run, calls = Run(), [0]
    hook = hf_model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        for ids in prompts:
            clock = _Clock()
            with torch.inference_mode():
                out = hf_model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False,
                                        eos_token_id=eos, pad_token_id=eos, streamer=clock, **assist)  # fmt: skip
            run.seconds += time.perf_counter() - clock.started
            run.tokens.append([t for t in out[0, len(ids) :].tolist() if t != eos])
            run.first8.append(
                clock.first8 if clock.first8 is not None else time.perf_counter() - clock.started
            )
    finally:
        hook.remove()
    run.forwards = calls[0]
    return run


def _engine_run(engine, system_prompt: str, texts: list[str], max_tokens: int) -> Run:
    from llm.session import Session

    run = Run()
    for text in texts:
        started = time.perf_counter()
        session = Session(engine, system_prompt=system_prompt, max_context=512)
        session.add_turn(text)
        tokens, first8 = [], None
        for delta in session.generate(max_tokens=max_tokens):
            tokens += delta.token_ids
            if first8 is None and len(tokens) >= 8:
                first8 = time.perf_counter() - started
        run.seconds += time.perf_counter() - started
        run.tokens.append(tokens)
        run.first8.append(first8 if first8 is not None else time.perf_counter() - started)
        stats = session.last_reply
        run.forwards += stats.steps
        run.drafted += stats.drafted
        run.accepted += stats.accepted
    return run


def _summary(runs: list[Run], reference: list[list[int]] | None, forwards_offset: int = 0) -> dict:
    def median(values):
        return statistics.median(values)

    last = runs[-1]
    return {
        "tokens_per_s": median([r.generated / r.seconds for r in runs]),
        "tokens_per_step": last.generated / max(1, last.forwards - forwards_offset),
        "acceptance_rate": (last.accepted / last.drafted) if last.drafted else None,
        "first8_ms": median([statistics.median(r.first8) * 1000 for r in runs]),
        "identical_to_hf_ar": reference is None or all(r.tokens == reference for r in runs),
        "generated_tokens": last.generated,
        "target_forwards": last.forwards,
        "drafted": last.drafted,
        "accepted": last.accepted,
    }


def verify_costs(
    folder: Path, dtypes=("float32", "bfloat16"), repeats: int = 7
) -> dict[str, dict[int, float]]:
    """Median ms of a T-token forward at position 200 for each dtype (our model, this CPU)."""
    from llm.model import Transformer

    costs: dict[str, dict[int, float]] = {}
    for name in dtypes:
        model = Transformer.from_folder(folder, dtype=getattr(torch, name))
        cache = model.new_cache(256)
        model(torch.arange(200), cache, 0)
        row = {}
        for T in VERIFY_SIZES:
            tokens = torch.arange(T) + 300
            model(tokens, cache, 200)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                model(tokens, cache, 200)
                times.append(time.perf_counter() - started)
            row[T] = statistics.median(times) * 1000
        costs[name] = row
        del model, cache
    return costs


def run(args: argparse.Namespace, config) -> int:
    from transformers import AutoModelForCausalLM

    from app.profiles import resolve_profile
    from app.store import fetch
    from llm.backends import select_backend
    from llm.engine import Engine
    from llm.loading import ensure_hf_folder, load_model

    threads = args.threads or config.llm.threads
    if threads:
        torch.set_num_threads(threads)
    profile = resolve_profile(config)
    backend = select_backend(config.llm.device, config.llm.dtype, profile=profile.name, role="target")
    device, dtype = str(backend.device), backend.dtype
    if args.dtype:
        dtype = getattr(torch, args.dtype)
    drafter = args.drafter or profile.draft
    folder = ensure_hf_folder(fetch(profile.llm, offline=config.models.offline))
    k_min, k_max = config.llm.k_min, config.llm.k_max
    texts = PROMPTS[: max(1, min(args.prompts, len(PROMPTS)))]
    print(f"model {folder.name}  device {device}  dtype {str(dtype).removeprefix('torch.')}  drafter {drafter}  "
          f"k {k_min}-{k_max}  threads {torch.get_num_threads()}  prompts {len(texts)}  max tokens {args.max_tokens}  repeats {args.repeats}")  # fmt: skip

    costs = {} if args.skip_verify_costs else verify_costs(folder)
    for name, row in costs.items():
        print(f"verify cost {name:9s} " + "  ".join(f"T={t}:{ms:.0f}ms" for t, ms in row.items()))

    target, tokenizer = load_model(folder, dtype=dtype, device=device)
    hf_target = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    if drafter in ("ngram", "none"):
        spec = Engine(
            target,
            tokenizer,
            drafter_kind="ngram" if drafter == "ngram" else "none",
            k_min=k_min,
            k_max=k_max,
        )
        assist = {"prompt_lookup_num_tokens": min(10, k_max)} if drafter == "ngram" else {}
    else:
        draft_folder = ensure_hf_folder(fetch(drafter, offline=config.models.offline))
        draft_model, _ = load_model(draft_folder, dtype=dtype, device=device)
        spec = Engine(
            target, tokenizer, drafter_kind="model", draft_model=draft_model, k_min=k_min, k_max=k_max
        )
        hf_draft = AutoModelForCausalLM.from_pretrained(draft_folder, dtype=dtype).to(device).eval()
        assist = {"assistant_model": hf_draft}
    plain = Engine(target, tokenizer, drafter_kind="none", k_min=0, k_max=0)
    system = config.llm.system_prompt
    from llm.session import Session

    prompt_ids = []
    for text in texts:
        session = Session(plain, system_prompt=system, max_context=512)
        session.add_turn(text)
        prompt_ids.append(session.tokens())
    eos = tokenizer.eos_token_id

    methods = {
        "hf_ar": lambda ps, ts: _hf_run(hf_target, ps, args.max_tokens, eos),
        "engine_ar": lambda ps, ts: _engine_run(plain, system, ts, args.max_tokens),
        "hf_assisted": lambda ps, ts: _hf_run(hf_target, ps, args.max_tokens, eos, **assist),
        "engine_spec": lambda ps, ts: _engine_run(spec, system, ts, args.max_tokens),
    }
    for fn in methods.values():  # warm-up: one prompt each
        fn(prompt_ids[:1], texts[:1])
    runs: dict[str, list[Run]] = {name: [] for name in methods}
    for repeat in range(args.repeats):
        for name, fn in methods.items():  # interleaved, so load changes hit every method alike
            runs[name].append(fn(prompt_ids, texts))
            print(f"  repeat {repeat + 1}/{args.repeats} {name:12s} {runs[name][-1].generated / runs[name][-1].seconds:6.1f} tok/s", flush=True)  # fmt: skip
    reference = runs["hf_ar"][0].tokens
    results = {
        "hf_ar": _summary(runs["hf_ar"], None),
        "engine_ar": _summary(runs["engine_ar"], reference),
        "hf_assisted": _summary(runs["hf_assisted"], reference),
        "engine_spec": _summary(runs["engine_spec"], reference),
    }
    report = {
        "methods": results,
        "speedup_vs_hf_ar": results["engine_spec"]["tokens_per_s"] / results["hf_ar"]["tokens_per_s"],
        "speedup_vs_hf_assisted": results["engine_spec"]["tokens_per_s"]
        / results["hf_assisted"]["tokens_per_s"],
        "drafter": drafter,
        "model": folder.name,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "k_range": [k_min, k_max],
        "threads": torch.get_num_threads(),
        "prompts": len(texts),
        "max_new_tokens": args.max_tokens,
        "repeats": args.repeats,
        "verify_cost_ms": costs,
        "note": "tokens_per_step counts the bonus/correction token; HF's first forward also consumes the prompt. "
        "acceptance_rate is null where HF does not expose it. Taken on a shared CPU unless stated otherwise.",
    }
    _print_table(report)
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def _print_table(report: dict) -> None:
    print(
        f"\n{'method':12s} {'tok/s':>7s} {'tok/fwd':>7s} {'accept':>7s} {'first8':>8s} {'vs hf_ar':>8s} {'identical':>9s}"
    )
    base = report["methods"]["hf_ar"]["tokens_per_s"]
    for name, m in report["methods"].items():
        accept = "-" if m["acceptance_rate"] is None else f"{m['acceptance_rate']:.2f}"
        print(f"{name:12s} {m['tokens_per_s']:7.1f} {m['tokens_per_step']:7.2f} {accept:>7s} "
              f"{m['first8_ms']:6.0f}ms {m['tokens_per_s'] / base:7.2f}x {str(m['identical_to_hf_ar']):>9s}")  # fmt: skip
    print(
        f"engine_spec: {report['speedup_vs_hf_ar']:.2f}x vs hf_ar, {report['speedup_vs_hf_assisted']:.2f}x vs hf_assisted"
    )
