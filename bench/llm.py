"""`specvoice bench llm`: HF generate vs our engine (and llama.cpp), autoregressive and speculative.

Methods (one run, same model file, dtype, thread count, the same 44 short voice-assistant prompts in
`PROMPTS`, same max tokens; interleaved per repeat so load changes hit every method alike):
  hf_ar        transformers `generate(do_sample=False)` (the reference of every ratio)
  engine_ar    our static-cache model, k = 0 (one 1-token forward per token)
  hf_assisted  transformers assisted generation with the same drafter (`prompt_lookup_num_tokens` for the
               n-gram drafter, `assistant_model` for a draft model; none for the draft head)
  engine_spec  our speculative engine (adaptive k in [k_min, k_max])
  llamacpp     llama.cpp on the same GGUF (the optional `llamacpp` extra: llama-cpp-python, else
               llama-cpp-py-sync; bench/llm_llamacpp.py), greedy, same prompt token ids, max tokens and
               threads, timed like engine_ar; skipped with a one-line reason (table and JSON) without one

Per method: tokens/s with min/median/max over `--repeats` (prefill of the prompt included, as HF generate
includes it), tokens per target forward (bonus/correction token included), acceptance rate (ours only),
time to the first 8 tokens (median over prompts; for the engine and llama.cpp also *after the prompt's
prefill*, which is what a voice turn sees since its prompt is prefilled while the user speaks, with that
prefill's time and the decode rate without it), the ratio to llama.cpp's tok/s, and per prompt whether the
tokens equal hf_ar's, our fp32 greedy reference (token-identical to HF fp32, tests/llm) and (llama.cpp, the
speculative engine) engine_ar's, with the first divergence position; the 1-minute load average before and
after each repeat. It also measures a T-token forward at position 200 in fp32, bf16 and bf16 with int4
1-row steps (`verify_cost_ms`).

Engine weights follow `--quant` / `llm.quant` (auto: the Q4_1 file's codes in packed int4 matmuls for 1-row
steps) and `--compile` / `llm.compile`. Numbers and their dates: docs/llm.md and the README.
"""

from __future__ import annotations

import argparse
import json
import os
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
    "What is the chemical symbol for gold?",
    "How many minutes are in a day?",
    "What is a good stretch for a stiff neck?",
    "Why do leaves change color in autumn?",
    "Who was the first person to walk on the moon?",
    "What is the main ingredient in guacamole?",
    "How do I convert Fahrenheit to Celsius?",
    "What language is spoken in Brazil?",
    "Suggest a quick breakfast idea.",
    "What causes thunder?",
    "How many strings does a violin have?",
    "What is the freezing point of water in Fahrenheit?",
    "Name a famous composer from Austria.",
    "How often should I water a cactus?",
    "What does a thermometer measure?",
    "Why do we have seasons?",
    "What is the smallest prime number?",
    "Give me a tip for learning a new language.",
    "What animal is known as the king of the jungle?",
    "How do bees make honey?",
    "What is the currency of Japan?",
    "Describe a rainbow in one sentence.",
]
# (The draft-head training prompts must stay disjoint from these: bench/llm.py PROMPTS is the list to check.)
VERIFY_SIZES = (1, 2, 3, 4, 5, 6, 8, 9, 12, 16, 17)
METHODS = ("hf_ar", "engine_ar", "hf_assisted", "engine_spec", "llamacpp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompts", type=int, default=len(PROMPTS), help=f"how many prompts (default and max {len(PROMPTS)})"
    )
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per prompt (default 48)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (min/median/max reported)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: the config/profile)")
    parser.add_argument(
        "--drafter", default=None,
        help="ngram | head (the shipped draft head) | none | a draft model source (default: profile)",
    )
    parser.add_argument(
        "--quant", default=None, help="engine weights: auto | int4 | none (default: the config's llm.quant)"
    )
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the engine's 1-token step (default: the config's llm.compile)")  # fmt: skip
    parser.add_argument(
        "--methods", default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (llamacpp needs the llamacpp extra)",
    )  # fmt: skip
    parser.add_argument(
        "--skip-verify-costs", action="store_true", help="skip the T-token forward cost table"
    )
    parser.add_argument(
        "--skip-divergence",
        action="store_true",
        help="skip the fp32 greedy reference (per-prompt divergence)",
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="torch (and llama.cpp) threads (default: the config's llm.threads, 1)")  # fmt: skip


@dataclass
class Run:
    tokens: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0
    forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    first8: list[float] = field(default_factory=list)  # from the request (prompt prefill included)
    # engine and llamacpp only: after the prompt's prefill (all but its last token), and that prefill
    first8_prefilled: list[float] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)  # seconds per prompt

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
    """Per prompt: a fresh session; the prompt's prefill is timed apart so `first8_prefilled` is what a
    voice turn sees (its prompt is prefilled while the user speaks)."""
    from llm.session import Session

    run = Run()
    for text in texts:
        started = time.perf_counter()
        session = Session(engine, system_prompt=system_prompt, max_context=512)
        session.extend(text)
        session.end_user_turn()  # prefills all but the last prompt token
        prefilled = time.perf_counter()
        tokens, first8 = [], None
        for delta in session.generate(max_tokens=max_tokens):
            tokens += delta.token_ids
            if first8 is None and len(tokens) >= 8:
                first8 = time.perf_counter()
        ended = time.perf_counter()
        first8 = first8 if first8 is not None else ended
        run.seconds += ended - started
        run.tokens.append(tokens)
        run.first8.append(first8 - started)
        run.first8_prefilled.append(first8 - prefilled)
        run.prefill.append(prefilled - started)
        stats = session.last_reply
        run.forwards += stats.steps
        run.drafted += stats.drafted
        run.accepted += stats.accepted
    return run


def _llamacpp_run(llama, prompts: list[list[int]], max_tokens: int, stop: set[int]) -> Run:
    """Timed like `_engine_run`: the clock starts before the prompt (all but its last token) is evaluated,
    `first8_prefilled` after it; greedy from the same prompt token ids (bench/llm_llamacpp.py)."""
    run = Run()
    for ids in prompts:
        started = time.perf_counter()
        llama.prefill(ids)
        prefilled = time.perf_counter()
        tokens, first8 = [], None
        for token in llama.generate(ids, max_tokens, stop):
            tokens.append(token)
            if first8 is None and len(tokens) >= 8:
                first8 = time.perf_counter()
        ended = time.perf_counter()
        first8 = first8 if first8 is not None else ended
        run.seconds += ended - started
        run.tokens.append(tokens)
        run.first8.append(first8 - started)
        run.first8_prefilled.append(first8 - prefilled)
        run.prefill.append(prefilled - started)
        run.forwards += len(tokens) + (len(tokens) < max_tokens)  # the stop token's forward
    return run


def divergence(tokens: list[list[int]], reference: list[list[int]]) -> dict:
    """Per prompt: identical to the reference, else the first position where the token differs."""
    first: list[int | None] = []
    for ours, ref in zip(tokens, reference, strict=True):
        if ours == ref:
            first.append(None)
            continue
        n = min(len(ours), len(ref))
        first.append(next((i for i in range(n) if ours[i] != ref[i]), n))
    diverged = [f for f in first if f is not None]
    return {
        "identical": len(first) - len(diverged),
        "prompts": len(first),
        "first_divergence": first,
        "median_first_divergence": statistics.median(diverged) if diverged else None,
    }


def _spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _summary(
    runs: list[Run],
    reference: list[list[int]] | None,
    fp32: list[list[int]] | None,
    engine: list[list[int]] | None = None,
) -> dict:
    last = runs[-1]
    rates = [r.generated / r.seconds for r in runs]
    first8 = [statistics.median(r.first8) * 1000 for r in runs]
    out = {
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_spread": _spread(rates),
        "tokens_per_step": last.generated / max(1, last.forwards),
        "acceptance_rate": (last.accepted / last.drafted) if last.drafted else None,
        "first8_ms": statistics.median(first8),
        "first8_ms_spread": _spread(first8),
        "identical_to_hf_ar": reference is None or all(r.tokens == reference for r in runs),
        "generated_tokens": last.generated,
        "target_forwards": last.forwards,
        "drafted": last.drafted,
        "accepted": last.accepted,
    }
    if last.first8_prefilled:
        prefilled = [statistics.median(r.first8_prefilled) * 1000 for r in runs]
        out["first8_after_prefill_ms"] = statistics.median(prefilled)
        out["first8_after_prefill_ms_spread"] = _spread(prefilled)
        prefill = [statistics.median(r.prefill) * 1000 for r in runs]
        out["prefill_ms"] = statistics.median(prefill)
        out["prefill_ms_spread"] = _spread(prefill)
        decode = [r.generated / (r.seconds - sum(r.prefill)) for r in runs]
        out["decode_tokens_per_s"] = statistics.median(decode)
        out["decode_tokens_per_s_spread"] = _spread(decode)
    if reference is not None:
        out["vs_hf_ar"] = divergence(last.tokens, reference)
    if fp32 is not None:
        out["vs_fp32_greedy"] = divergence(last.tokens, fp32)
    if engine is not None:
        out["vs_engine_ar"] = divergence(last.tokens, engine)
    return out


def _time_forward(model, T: int, repeats: int) -> float:
    cache = model.new_cache(256)
    model(torch.arange(200), cache, 0)
    tokens = torch.arange(T) + 300
    model(tokens, cache, 200)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(tokens, cache, 200)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def verify_costs(folder: Path, repeats: int = 7) -> dict[str, dict[int, float]]:
    """Median ms of a T-token forward at position 200: fp32, bf16, bf16 with int4 1-row steps (this CPU)."""
    from llm.backends import prepare_model, select_backend
    from llm.model import Transformer

    costs: dict[str, dict[int, float]] = {}
    for name, dtype, quant in (("float32", "float32", "none"), ("bfloat16", "bfloat16", "none"),
                               ("bf16+int4", "bfloat16", "int4")):  # fmt: skip
        model = Transformer.from_folder(folder, dtype=getattr(torch, dtype))
        try:
            prepare_model(model, select_backend("cpu", dtype), quant=quant, source=folder)
        except ValueError as exc:  # not a Q4_1 model: no int4 row
            print(f"verify cost {name}: skipped ({exc})")
            continue
        costs[name] = {T: _time_forward(model, T, repeats) for T in VERIFY_SIZES}
        del model
    return costs


def run(args: argparse.Namespace, config) -> int:
    from transformers import AutoModelForCausalLM

    from app.profiles import resolve_profile
    from app.store import fetch
    from bench.llm_llamacpp import LlamaCppUnavailable, open_llamacpp, skip_reason
    from llm.backends import prepare_model, select_backend
    from llm.engine import Engine
    from llm.loading import ensure_hf_folder, load_model
    from llm.quant import gguf_source
    from llm.session import Session

    threads = args.threads or config.llm.threads
    if threads:
        torch.set_num_threads(threads)
    profile = resolve_profile(config)
    backend = select_backend(config.llm.device, config.llm.dtype, profile=profile.name, role="target")
    if args.dtype:
        backend = select_backend(str(backend.device), args.dtype, profile=profile.name, role="target")
    device, dtype = str(backend.device), backend.dtype
    quant = args.quant or config.llm.quant
    compile_step = config.llm.compile if args.compile is None else args.compile
    drafter = args.drafter or profile.draft
    folder = ensure_hf_folder(fetch(profile.llm, offline=config.models.offline))
    k_min, k_max = config.llm.k_min, config.llm.k_max
    texts = PROMPTS[: max(1, min(args.prompts, len(PROMPTS)))]
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(wanted) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {','.join(METHODS)}")
    skipped: dict[str, str] = {}
    if "llamacpp" in wanted and (reason := skip_reason(gguf_source(folder))):
        skipped["llamacpp"] = reason
        wanted.remove("llamacpp")
    if "hf_ar" not in wanted:
        wanted.insert(0, "hf_ar")  # the reference every ratio and identity is taken against

    costs = {} if args.skip_verify_costs else verify_costs(folder)
    for name, row in costs.items():
        print(f"verify cost {name:10s} " + "  ".join(f"T={t}:{ms:.0f}ms" for t, ms in row.items()))

    target, tokenizer = load_model(folder, dtype=dtype, device=device)
    started = time.perf_counter()
    prepare_model(target, backend, quant=quant, source=folder, compile=compile_step)
    prepare_s = time.perf_counter() - started
    weights = type(target.layers[0].mlp.down_proj).__name__
    print(f"model {folder.name}  device {device}  dtype {str(dtype).removeprefix('torch.')}  weights {weights}  "
          f"compile {compile_step}  drafter {drafter}  k {k_min}-{k_max}  threads {torch.get_num_threads()}  "
          f"prompts {len(texts)}  max tokens {args.max_tokens}  repeats {args.repeats}  (prepare {prepare_s:.1f} s)")  # fmt: skip
    hf_target = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    if drafter in ("ngram", "none", "head"):
        spec = Engine(target, tokenizer, drafter_kind=drafter, k_min=k_min, k_max=k_max)
        assist = {"prompt_lookup_num_tokens": min(10, k_max)} if drafter == "ngram" else {}
        if drafter == "head" and "hf_assisted" in wanted:  # transformers has no draft-head assistant
            skipped["hf_assisted"] = "no transformers equivalent of the draft head"
            wanted.remove("hf_assisted")
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

    prompt_ids = []
    for text in texts:
        session = Session(plain, system_prompt=system, max_context=512)
        session.add_turn(text)
        prompt_ids.append(session.tokens())
    eos = tokenizer.eos_token_id
    eos_ids = {eos, *tokenizer(["<|im_end|>"], add_special_tokens=False)["input_ids"][0]}

    fp32_reference = None
    if not args.skip_divergence:
        exact = dtype == torch.float32 and weights == "Linear"
        if not exact:  # our fp32 engine is token-identical to HF fp32 greedy (tests/llm): the reference
            reference_model, _ = load_model(folder, dtype=torch.float32, device=device)
            reference_engine = Engine(reference_model, tokenizer, drafter_kind="none", k_min=0, k_max=0)
            fp32_reference = _engine_run(reference_engine, system, texts, args.max_tokens).tokens
            del reference_model, reference_engine

    methods = {
        "hf_ar": lambda: _hf_run(hf_target, prompt_ids, args.max_tokens, eos),
        "engine_ar": lambda: _engine_run(plain, system, texts, args.max_tokens),
        "hf_assisted": lambda: _hf_run(hf_target, prompt_ids, args.max_tokens, eos, **assist),
        "engine_spec": lambda: _engine_run(spec, system, texts, args.max_tokens),
    }
    llama, llamacpp_build = None, None
    if "llamacpp" in wanted:
        try:
            llama = open_llamacpp(gguf_source(folder), torch.get_num_threads())
        except LlamaCppUnavailable as exc:  # e.g. a prebuilt library this system's libc cannot load
            skipped["llamacpp"] = str(exc)
        else:
            llamacpp_build = llama.describe()
            print(f"llamacpp: {llamacpp_build}")
            methods["llamacpp"] = lambda: _llamacpp_run(llama, prompt_ids, args.max_tokens, eos_ids)
    for name, reason in skipped.items():
        print(f"{name}: skipped ({reason})")
    methods = {name: fn for name, fn in methods.items() if name in wanted}
    warm_prompts, warm_texts = prompt_ids, texts
    prompt_ids, texts = prompt_ids[:1], texts[:1]
    for fn in methods.values():  # warm-up: one prompt each
        fn()
    prompt_ids, texts = warm_prompts, warm_texts
    runs: dict[str, list[Run]] = {name: [] for name in methods}
    load = [os.getloadavg()[0]]  # 1-minute load average: before, then after each repeat
    for repeat in range(args.repeats):
        for name, fn in methods.items():  # interleaved, so load changes hit every method alike
            runs[name].append(fn())
            print(f"  repeat {repeat + 1}/{args.repeats} {name:12s} {runs[name][-1].generated / runs[name][-1].seconds:6.1f} tok/s", flush=True)  # fmt: skip
        load.append(os.getloadavg()[0])
    if llama is not None:
        llama.close()
    reference = runs["hf_ar"][0].tokens
    engine_tokens = runs["engine_ar"][-1].tokens if "engine_ar" in runs else None
    results = {name: _summary(r, None if name == "hf_ar" else reference, fp32_reference,
                              None if name in ("hf_ar", "engine_ar") else engine_tokens)
               for name, r in runs.items()}  # fmt: skip
    base = results["hf_ar"]["tokens_per_s"]
    ratio_vs_llamacpp = None
    if "llamacpp" in results:
        rate = results["llamacpp"]["tokens_per_s"]
        ratio_vs_llamacpp = {name: m["tokens_per_s"] / rate for name, m in results.items()}
    report = {
        "methods": results,
        "speedup_vs_hf_ar": {name: m["tokens_per_s"] / base for name, m in results.items()},
        "ratio_vs_llamacpp": ratio_vs_llamacpp,
        "skipped": skipped,
        "llamacpp_build": llamacpp_build,
        "load_average_1min": {"before": load[0], "after_each_repeat": load[1:], **_spread(load)},
        "drafter": drafter,
        "model": folder.name,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "weights": weights,
        "compile": compile_step,
        "k_range": [k_min, k_max],
        "threads": torch.get_num_threads(),
        "prompts": len(texts),
        "max_new_tokens": args.max_tokens,
        "repeats": args.repeats,
        "verify_cost_ms": costs,
        "note": "tokens_per_step counts the bonus/correction token; HF's first forward also consumes the prompt. "
        "acceptance_rate is null where HF does not expose it. first8_ms includes the prompt's prefill; "
        "first8_after_prefill_ms (engine, llamacpp) starts after all but the last prompt token are evaluated, as in a voice turn; "
        "prefill_ms is that prefill (median per prompt), decode_tokens_per_s the rate without it. "
        "vs_engine_ar compares greedy tokens with engine_ar's. vs_fp32_greedy compares with our "
        "fp32 engine (token-identical to HF fp32 greedy). Taken on a shared CPU unless stated otherwise.",
    }
    _print_table(report)
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def _print_table(report: dict) -> None:
    ratios = report.get("ratio_vs_llamacpp") or {}
    print(f"\n{'method':12s} {'tok/s':>7s} {'(min-max)':>12s} {'decode':>6s} {'prefill':>7s} {'tok/fwd':>7s} "
          f"{'accept':>6s} {'first8':>7s} {'after pf':>8s} {'vs hf_ar':>8s} {'vs llama':>8s} {'=hf_ar':>6s} {'=fp32':>6s} "
          f"{'=eng_ar':>7s}")  # fmt: skip
    for name, m in report["methods"].items():
        accept = "-" if m["acceptance_rate"] is None else f"{m['acceptance_rate']:.2f}"
        spread = m["tokens_per_s_spread"]
        after = m.get("first8_after_prefill_ms")
        same_hf, same_fp32, same_engine = (
            "-" if m.get(key) is None else f"{m[key]['identical']}/{m[key]['prompts']}"
            for key in ("vs_hf_ar", "vs_fp32_greedy", "vs_engine_ar")
        )
        after_text = "-" if after is None else f"{after:.0f}ms"
        decode = "-" if "decode_tokens_per_s" not in m else f"{m['decode_tokens_per_s']:.1f}"
        prefill = "-" if "prefill_ms" not in m else f"{m['prefill_ms']:.0f}ms"
        vs_llama = f"{ratios[name]:7.2f}x" if name in ratios else "       -"
        print(f"{name:12s} {m['tokens_per_s']:7.1f} {spread['min']:5.1f}-{spread['max']:<6.1f} {decode:>6s} "
              f"{prefill:>7s} {m['tokens_per_step']:7.2f} {accept:>6s} {m['first8_ms']:5.0f}ms "
              f"{after_text:>8s} {report['speedup_vs_hf_ar'][name]:7.2f}x {vs_llama} {same_hf:>6s} {same_fp32:>6s} "
              f"{same_engine:>7s}")  # fmt: skip
    for name, reason in report.get("skipped", {}).items():
        print(f"{name:12s} skipped: {reason}")
    for key, what in (("vs_fp32_greedy", "fp32 greedy"), ("vs_engine_ar", "engine_ar")):
        for name, m in report["methods"].items():
            if key in m:
                firsts = m[key]["first_divergence"]
                print(f"first divergence from {what}, {name:12s}: "
                      + " ".join("=" if f is None else str(f) for f in firsts))  # fmt: skip
    if "load_average_1min" in report:
        load = report["load_average_1min"]
        print(f"1-minute load average: before {load['before']:.1f}, after each repeat "
              + " ".join(f"{x:.1f}" for x in load["after_each_repeat"]))  # fmt: skip
