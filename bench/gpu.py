"""`specvoice bench gpu`: GPU step times at real model shapes (random weights), bf16 vs FP8, our Triton
kernels vs their torch references, achieved memory bandwidth, and the speculative speedup they imply.

Runs with torch + triton only (no ASR/TTS packages, no network, no model files): every model is built
with random weights directly on the GPU, so only the *times* are meaningful. Acceptance rates cannot be
measured with random weights; they come from `specvoice bench llm --json` (CPU, real models) via
`--acceptance-json`, or the stated default, and every number built from them is labelled "composed".

Results are written to --json after each section, so a run cut short still leaves what it measured.
`--smoke` runs the same code at toy shapes in seconds (CPU allowed): that is what CI runs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bench.gpu_report import bench_speculative, print_report
from bench.gpu_timing import (
    DRAFT_ONLY,
    PAIRS,
    SHAPES,
    SMOKE_PAIRS,
    SMOKE_SHAPES,
    build_random_model,
    peak_bandwidth,
    streamed_bytes,
    synchronize,
    time_call,
)

DEFAULT_ALPHA = 0.7  # per-token acceptance assumed when no measured rate is given (stated in the output)
KS = (4, 8, 16)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke", action="store_true", help="toy shapes, few iterations (CPU allowed): checks the script"
    )
    parser.add_argument(
        "--acceptance-json",
        metavar="PATH",
        help="JSON from `specvoice bench llm --json` (CPU-measured acceptance rates)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"stated per-token acceptance rate (default {DEFAULT_ALPHA})",
    )
    parser.add_argument(
        "--context",
        type=int,
        default=1024,
        help="tokens already in the KV cache when timing a step (default 1024)",
    )
    parser.add_argument(
        "--iters", type=int, default=30, help="timed repetitions per measurement (default 30)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=420.0,
        help="seconds after which remaining sections are skipped (default 420)",
    )
    parser.add_argument("--allow-cpu", action="store_true", help="run the full shapes on CPU (very slow; for debugging)")  # fmt: skip


class _Run:
    """Shared state of one bench run: device, settings, results so far, the JSON file, the clock."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke = bool(args.smoke)
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        self.cuda = self.device.type == "cuda"
        self.half = torch.bfloat16 if self.cuda else torch.float32
        self.shapes = SMOKE_SHAPES if self.smoke else SHAPES
        self.context = 24 if self.smoke else args.context
        self.iters = 2 if self.smoke else args.iters
        self.sizes = (1, 5) if self.smoke else tuple(k + 1 for k in (0, *KS))
        self.ks = (4,) if self.smoke else KS
        self.started = time.monotonic()
        gpu, peak = peak_bandwidth(self.device)
        self.peak = peak
        self.results: dict = {"device": gpu, "smoke": self.smoke, "context": self.context, "peak_bandwidth_Bps": peak,
                              "torch": torch.__version__, "sections": {}, "skipped": [], "errors": []}  # fmt: skip
        if self.cuda:
            self.results["capability"] = ".".join(map(str, torch.cuda.get_device_capability(self.device)))
        try:
            import triton

            self.results["triton"] = triton.__version__
        except Exception:
            self.results["triton"] = None

    def triton_ok(self) -> bool:
        from kernels.dispatch import interpreting, triton_importable

        return triton_importable() and (self.cuda or interpreting())

    def over_budget(self) -> bool:
        return time.monotonic() - self.started > self.args.time_budget

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.started, 1)
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(self.results, indent=2, default=str))

    def free(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


def _row_bandwidth(run: _Run, model, t: int, seconds: float) -> dict:
    nbytes = streamed_bytes(model, run.context, t)
    gbps = nbytes / seconds / 1e9
    return {
        "bytes": nbytes,
        "GBps": round(gbps, 1),
        "peak_share": round(gbps * 1e9 / run.peak, 3) if run.peak else None,
    }


def _time_step(run: _Run, model, cache, t: int, backend: str) -> float:
    """Seconds per T-token step replayed from a CUDA graph (eager static path on CPU), at run.context."""
    from llm.cuda_graphs import GraphedStep

    step = GraphedStep(model, cache, t, backend=backend)
    step.start.fill_(run.context)
    fn = step.graph.replay if step.graph is not None else step._run
    with torch.inference_mode():
        seconds = time_call(fn, run.device, iters=run.iters)
    del step
    return seconds


def bench_steps(run: _Run, name: str, sizes: tuple[int, ...]) -> list[dict]:
    """Per-step times of one model shape: bf16 and FP8, torch reference vs our kernels, graphed vs eager."""
    from llm.fp8 import convert_to_fp8, fuse_norms

    args = run.shapes[name]
    rows: list[dict] = []
    kernel = "triton" if run.triton_ok() else None
    for fmt in ("bf16", "fp8"):
        model = build_random_model(args, run.device, run.half)
        cache = model.new_cache(run.context + 64)
        variants: list[tuple[str, str | None]] = [
            ("graph, torch attention", "torch"),
            ("graph, triton attention", kernel),
        ]
        if fmt == "fp8":
            convert_to_fp8(model)
            variants.append(("graph, fused norm+fp8 + triton attention", kernel))
        for label, backend in [*variants, ("eager (no graph, SDPA)", "eager")]:
            if label.startswith("graph, fused"):
                fuse_norms(model, backend="triton" if kernel else "torch")
            for t in sizes:
                row = {"model": name, "format": fmt, "variant": label, "T": t}
                if backend is None:
                    rows.append({**row, "skipped": "Triton needs CUDA (or TRITON_INTERPRET=1)"})
                    continue
                try:
                    if backend == "eager":
                        tokens = torch.zeros(t, dtype=torch.long, device=run.device)
                        seconds = time_call(
                            lambda tokens=tokens, model=model, cache=cache: model(tokens, cache, run.context),
                            run.device,
                            iters=run.iters,
                        )
                    else:
                        seconds = _time_step(run, model, cache, t, backend)
                    rows.append(
                        {**row, "ms": round(seconds * 1e3, 4), **_row_bandwidth(run, model, t, seconds)}
                    )
                except Exception as exc:  # record and go on: one failure must not lose the run
                    rows.append({**row, "error": f"{type(exc).__name__}: {exc}"[:400]})
        model = cache = None  # free before the next format is built
        run.free()
    return rows


def bench_fp8_conversion(run: _Run, name: str) -> dict:
    """Seconds to GPTQ-round a model of this shape (random weights, random tokens as much calibration as
    the packaged text holds): the one-time cost of loading an FP8 target before its result is cached."""
    from llm.gptq import gptq_layers

    args = run.shapes[name]
    model = build_random_model(args, run.device, run.half)
    n_seq, length = (4, 24) if run.smoke else (80, 148)  # the packaged text: 80 chats, 11 810 tokens
    gen = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, args.vocab_size, (length,), generator=gen).tolist() for _ in range(n_seq)]
    synchronize(run.device)
    started = time.perf_counter()
    quantized = gptq_layers(model, sequences, lambda n: n == "lm_head")
    synchronize(run.device)
    seconds = time.perf_counter() - started
    del model, quantized
    return {"model": name, "layers": args.n_layers * 7, "calibration_tokens": n_seq * length,
            "seconds": round(seconds, 1)}  # fmt: skip


def bench_kernels(run: _Run) -> list[dict]:
    """Our Triton kernels vs their torch references at the target's shapes: time and max error."""
    from bench.gpu_timing import time_graphed
    from kernels.attention import verify_attention_reference, verify_attention_triton
    from kernels.fp8_ops import quantize_weight
    from kernels.rmsnorm_fp8 import rmsnorm_fp8_linear_reference, rmsnorm_fp8_linear_triton

    a = run.shapes["tiny-target" if run.smoke else "qwen2.5-7b"]
    dev, rows = run.device, []
    gen = torch.Generator(device=dev).manual_seed(0)
    for n in (a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim, a.intermediate_size):
        w_q, w_s = quantize_weight(torch.randn(n, a.dim, device=dev, generator=gen) * 0.02)
        g = torch.ones(a.dim, device=dev, dtype=run.half)
        for m in run.sizes:
            x = torch.randn(m, a.dim, device=dev, generator=gen).to(run.half)
            for terms in (1, 2):  # 2: the default (value + rounding residual); the row pair is its cost

                def ref(x=x, w_q=w_q, w_s=w_s, g=g, terms=terms):
                    return rmsnorm_fp8_linear_reference(x, g, w_q, w_s, 1e-5, run.half, terms)

                variants = [("torch reference (norm, quantise, _scaled_mm)", ref)]
                for mode in (1, 0) if run.cuda else (0, 2):  # 1 (bf16 dot) is wrong in the interpreter
                    variants.append((f"triton fused, dot mode {mode}",
                                     lambda x=x, w_q=w_q, w_s=w_s, g=g, mode=mode, terms=terms: rmsnorm_fp8_linear_triton(x, g, w_q, w_s, 1e-5, run.half, dot_mode=mode, act_terms=terms)))  # fmt: skip
                shape = {"M": m, "K": a.dim, "N": n, "act_terms": terms}
                rows += _kernel_rows(run, "rmsnorm_fp8_linear", shape, variants, time_graphed)
    for ctx in (run.context, 4 * run.context):
        shape = (1, a.n_kv_heads, ctx + 32, a.head_dim)
        k_cache = torch.randn(shape, device=dev, generator=gen).to(run.half)
        v_cache = torch.randn(shape, device=dev, generator=gen).to(run.half)
        start = torch.tensor([ctx], device=dev)
        for t in run.sizes:
            q = torch.randn(1, a.n_heads, t, a.head_dim, device=dev, generator=gen).to(run.half)
            variants = [
                ("torch reference (einsum, fp32 softmax)", lambda q=q, k=k_cache, v=v_cache, s=start: verify_attention_reference(q, k, v, s)),
                ("triton verify kernel", lambda q=q, k=k_cache, v=v_cache, s=start: verify_attention_triton(q, k, v, s)),
            ]  # fmt: skip
            rows += _kernel_rows(run, "verify_attention", {"T": t, "context": ctx}, variants, time_graphed)
    return rows


def _kernel_rows(run: _Run, kernel: str, shape: dict, variants: list, time_graphed) -> list[dict]:
    rows, reference = [], None
    for label, fn in variants:
        row = {"kernel": kernel, **shape, "variant": label}
        if label.startswith("triton") and not run.triton_ok():
            rows.append({**row, "skipped": "Triton needs CUDA (or TRITON_INTERPRET=1)"})
            continue
        try:
            with torch.inference_mode():
                out = fn().float()
                if reference is None:
                    reference = out
                else:
                    err, scale = float((out - reference).abs().max()), float(reference.abs().max())
                    # the tests' tolerance: 2 bf16 ulps of the output's scale (fp32: 1e-5 relative)
                    if run.half == torch.bfloat16 and scale > 0:
                        tol = 2 * 2.0 ** (math.floor(math.log2(scale)) - 7)
                    else:
                        tol = 1e-5 * scale
                    row.update(max_abs_err_vs_ref=err, ref_max_abs=scale, within_tolerance=err <= tol)
                seconds, graphed = time_graphed(fn, run.device, iters=run.iters)
            rows.append({**row, "us": round(seconds * 1e6, 2), "graphed": graphed})
        except Exception as exc:
            rows.append({**row, "error": f"{type(exc).__name__}: {exc}"[:400]})
    return rows


def load_acceptance(path: str | None) -> dict[str, float]:
    """Acceptance rates from a `bench llm` JSON: every number in [0, 1] under a key containing "accept"."""
    if not path:
        return {}
    found: dict[str, float] = {}

    def walk(node, trail: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{trail}.{key}" if trail else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                label = node[i].get("name") or node[i].get("drafter") if isinstance(node[i], dict) else None
                walk(value, f"{trail}[{label or i}]")
        elif isinstance(node, int | float) and "accept" in trail.rsplit(".", 1)[-1].lower() and 0 < node <= 1:
            found[trail] = float(node)

    walk(json.loads(Path(path).read_text()), "")
    return found


def run(args: argparse.Namespace, config=None) -> int:
    state = _Run(args)
    if not state.cuda and not state.smoke and not args.allow_cpu:
        print("bench gpu: no CUDA device here; use --smoke to check the script on CPU (or --allow-cpu)")
        return 2
    if args.acceptance_json and not Path(args.acceptance_json).is_file():
        print(f"bench gpu: --acceptance-json {args.acceptance_json}: no such file")
        return 2
    state.results["acceptance_measured"] = load_acceptance(args.acceptance_json)
    try:  # what `--profile gpu-h100` would pick on this machine
        from llm.backends import select_backend

        chosen = select_backend("auto", "auto", profile="gpu-h100")
        state.results["backend_auto_gpu_h100"] = {"name": chosen.name, "reason": chosen.reason}
    except Exception as exc:
        state.results["backend_auto_gpu_h100"] = {"error": f"{type(exc).__name__}: {exc}"}
    state.results["alpha_stated"] = args.alpha
    sections = [("kernels", lambda: bench_kernels(state))]
    for target, draft in SMOKE_PAIRS if state.smoke else PAIRS:
        for name in (target, draft):
            sizes = (1,) if name in DRAFT_ONLY else state.sizes
            sections.append((f"steps:{name}", lambda name=name, sizes=sizes: bench_steps(state, name, sizes)))
        sections.append(
            (f"speculative:{target}+{draft}", lambda t=target, d=draft: bench_speculative(state, t, d))
        )
    if not state.smoke:
        sections.append(("steps:smollm2-135m", lambda: bench_steps(state, "smollm2-135m", state.sizes)))
    conversion_target = SMOKE_PAIRS[0][0] if state.smoke else PAIRS[0][0]
    sections.append(
        (f"fp8-conversion:{conversion_target}", lambda: bench_fp8_conversion(state, conversion_target))
    )
    for title, fn in sections:
        if state.over_budget():
            state.results["skipped"].append(title)
            continue
        print(f"[bench gpu] {title} ...", flush=True)
        started = time.monotonic()
        try:
            state.results["sections"][title] = fn()
        except Exception as exc:
            state.results["errors"].append({"section": title, "error": f"{type(exc).__name__}: {exc}"[:600]})
        state.results.setdefault("section_seconds", {})[title] = round(time.monotonic() - started, 1)
        state.free()
        state.save()
    print_report(state.results)
    state.save()
    bad = [
        r
        for rows in state.results["sections"].values()
        if isinstance(rows, list)
        for r in rows
        if "error" in r
    ]
    return 1 if state.results["errors"] or (state.smoke and bad) else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.gpu` — the same bench without the CLI (and so without app.config/tomllib)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
