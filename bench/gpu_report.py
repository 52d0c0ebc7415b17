"""`bench gpu`, second half: the speculative loop measured on the GPU, the speedup composed with acceptance
rates, and the printed report.

What is measured vs composed:
- measured: wall time of one real draft/verify step (k graphed 1-token draft steps fed on the GPU, one
  graphed (k+1)-token verify, the host sync the engine does to read the verdict) and of one plain decode
  step, with random weights;
- composed: tokens per step = (1 - α^(k+1)) / (1 - α) for a per-token acceptance rate α that random weights
  cannot produce; α is the stated default or a CPU-measured rate from `bench llm` on real models.
"""

from __future__ import annotations

import statistics
import time

import torch

from bench.gpu_timing import build_random_model, speculative_speedup, time_call

ALPHA_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)


def _wall(fn, device: torch.device, iters: int) -> float:
    """Median wall seconds of fn() including Python and the host sync it does (what a user waits)."""
    for _ in range(2):
        fn()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _fp8(model, kernels: bool):
    from llm.fp8 import convert_to_fp8, fuse_norms

    convert_to_fp8(model)
    fuse_norms(model, backend="auto" if kernels else "torch")  # auto: a kernel that fails falls back
    return model


def bench_speculative(run, target_name: str, draft_name: str) -> dict:
    """FP8 target + bf16 or FP8 draft: measured step times, then composed tokens/s and speedups."""
    from llm.cuda_graphs import GraphedStep

    kernels = run.triton_ok()
    backend = "auto" if kernels else "torch"  # auto = Triton on CUDA, with the reference as fallback
    dev, ctx, iters = run.device, run.context, max(2, run.iters // 3)
    target = _fp8(build_random_model(run.shapes[target_name], dev, run.half), kernels)
    tcache = target.new_cache(ctx + 64)
    ar = GraphedStep(target, tcache, 1, backend=backend)
    verify = {k: GraphedStep(target, tcache, k + 1, backend=backend) for k in run.ks}
    token = torch.zeros(1, dtype=torch.long, device=dev)
    from kernels.dispatch import broken_kernels

    out: dict = {"target": f"{target_name} fp8 (fused norm+fp8, {backend} attention)", "draft": draft_name,
                 "context": ctx, "kernels": backend, "rows": []}  # fmt: skip
    with torch.inference_mode():
        out["ar_step_ms"] = _wall(lambda ar=ar: int(ar(token, ctx)[-1].argmax()), dev, iters) * 1e3
        chunk = torch.zeros(16, dtype=torch.long, device=dev)
        out["prefill16_eager_ms"] = (
            time_call(lambda t=target, c=tcache: t(chunk, c, ctx - 16), dev, iters=iters) * 1e3
        )
        for draft_format in ("bf16", "fp8"):
            draft = build_random_model(run.shapes[draft_name], dev, run.half, seed=1)
            if draft_format == "fp8":
                _fp8(draft, kernels)
            dcache = draft.new_cache(ctx + 64)
            dstep = GraphedStep(draft, dcache, 1, backend=backend)
            draft_ms = _wall(lambda dstep=dstep: dstep(token, ctx), dev, iters) * 1e3
            for k in run.ks:

                def spec_step(k=k, dstep=dstep, verify=verify) -> int:
                    tokens, t = [token], token
                    for i in range(k):  # the draft's tokens stay on the GPU: no sync until the verdict
                        t = dstep(t, ctx + i)[-1].argmax().view(1)
                        tokens.append(t)
                    seq = torch.cat(tokens)
                    logits = verify[k](seq, ctx)
                    agree = (logits[:-1].argmax(-1) == seq[1:]).int().cumprod(0)
                    return int(agree.sum())  # the engine's host sync

                step_ms = _wall(spec_step, dev, iters) * 1e3
                verify_ms = (
                    _wall(
                        lambda k=k, v=verify: v[k](torch.zeros(k + 1, dtype=torch.long, device=dev), ctx),
                        dev,
                        iters,
                    )
                    * 1e3
                )
                out["rows"].append({"draft_format": draft_format, "k": k, "step_ms": round(step_ms, 3),
                                    "draft_step_ms": round(draft_ms, 3), "verify_ms": round(verify_ms, 3)})  # fmt: skip
            dstep = dcache = draft = None
            run.free()
    out["kernels_fallen_back"] = broken_kernels()
    out["composed"] = compose(
        out, run.results.get("alpha_stated"), run.results.get("acceptance_measured") or {}
    )
    verify = ar = tcache = target = None  # noqa: F841  (release GPU memory before the next section)
    return out


def compose(measured: dict, alpha_stated: float | None, alpha_measured: dict[str, float]) -> list[dict]:
    """Tokens/s and speedup over plain decoding for each acceptance rate, draft format and k (COMPOSED)."""
    alphas: dict[str, float] = {f"grid {a}": a for a in ALPHA_GRID}
    if alpha_stated is not None:
        alphas["stated default"] = alpha_stated
    alphas.update({f"measured on CPU: {name}": a for name, a in alpha_measured.items()})
    t_decode = measured["ar_step_ms"] / 1e3
    rows = []
    for source, alpha in alphas.items():
        for row in measured["rows"]:
            model = speculative_speedup(
                alpha, row["k"], row["draft_step_ms"] / 1e3, row["verify_ms"] / 1e3, t_decode
            )
            per_step = row["step_ms"] / 1e3  # the measured loop, not the sum of its parts
            spec_tps = model["tokens_per_step"] / per_step
            rows.append({"alpha_source": source, "alpha": round(alpha, 3), "draft_format": row["draft_format"],
                         "k": row["k"], "tokens_per_step": round(model["tokens_per_step"], 2),
                         "spec_tokens_per_s": round(spec_tps, 1), "ar_tokens_per_s": round(1 / t_decode, 1),
                         "speedup": round(spec_tps * t_decode, 2),
                         "speedup_from_parts": round(model["speedup"], 2)})  # fmt: skip
    return rows


def _table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def print_report(results: dict) -> None:
    print(f"\n== bench gpu on {results['device']} (torch {results['torch']}, triton {results.get('triton')}, "
          f"capability {results.get('capability', '-')}) ==")  # fmt: skip
    backend = results.get("backend_auto_gpu_h100", {})
    print(
        f"backend for --profile gpu-h100 here: {backend.get('name', backend.get('error'))} ({backend.get('reason', '')})"
    )
    peak = results.get("peak_bandwidth_Bps")
    print(
        f"peak memory bandwidth: {peak / 1e12:.2f} TB/s"
        if peak
        else "peak memory bandwidth: unknown for this device"
    )
    if results.get("smoke"):
        print("SMOKE RUN: toy shapes and few iterations; the numbers say nothing about speed.")
    sections = results["sections"]
    if "kernels" in sections:
        print("\n-- kernels vs torch reference (one launch each; CUDA-graphed on GPU) --")
        _table(
            sections["kernels"],
            [
                "kernel",
                "M",
                "K",
                "N",
                "act_terms",
                "T",
                "context",
                "variant",
                "us",
                "max_abs_err_vs_ref",
                "within_tolerance",
                "skipped",
                "error",
            ],
        )
    for title, rows in sections.items():
        if title.startswith("steps:"):
            print(
                f"\n-- {title[6:]}: one forward step of T tokens at context {results['context']} (random weights) --"
            )
            _table(rows, ["format", "variant", "T", "ms", "GBps", "peak_share", "skipped", "error"])
    for title, spec in sections.items():
        if not title.startswith("speculative"):
            continue
        print(f"\n-- speculative loop, MEASURED: target {spec['target']}, draft {spec['draft']} --")
        print(f"plain decode step (graphed + argmax sync): {spec['ar_step_ms']:.3f} ms; "
              f"16-token prefill chunk (eager): {spec['prefill16_eager_ms']:.3f} ms")  # fmt: skip
        _table(spec["rows"], ["draft_format", "k", "draft_step_ms", "verify_ms", "step_ms"])
        print(
            "\n-- expected speedup, COMPOSED = measured GPU step times x acceptance rate alpha (not measured here) --"
        )
        best: dict[tuple, dict] = {}
        for r in spec["composed"]:
            key = (r["alpha_source"], r["draft_format"])
            if key not in best or r["speedup"] > best[key]["speedup"]:
                best[key] = r
        _table(list(best.values()), ["alpha_source", "alpha", "draft_format", "k", "tokens_per_step",
                                     "ar_tokens_per_s", "spec_tokens_per_s", "speedup"])  # fmt: skip
    for title, conv in sections.items():
        if title.startswith("fp8-conversion:"):
            print(f"\n-- FP8 load, one-time GPTQ rounding (then cached), MEASURED: {conv['model']}, "
                  f"{conv['layers']} linear layers, {conv['calibration_tokens']} calibration tokens: "
                  f"{conv['seconds']} s --")  # fmt: skip
    for name in results.get("skipped", []):
        print(f"skipped (time budget): {name}")
    for err in results.get("errors", []):
        print(f"ERROR in {err['section']}: {err['error']}")
