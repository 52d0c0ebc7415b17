"""Helpers for `specvoice bench gpu`: model shapes, random-weight models built on the device, timers,
bandwidth bookkeeping and the speculative-decoding speedup model.

Imports only torch and our own modules (the GPU machine has no faster-whisper/piper and no network).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from llm.model import ModelArgs, Transformer

# Real architectures' shapes (random weights: only the step *times* mean anything).
SHAPES: dict[str, ModelArgs] = {
    "qwen2.5-7b": ModelArgs(vocab_size=152064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, head_dim=128,
                            intermediate_size=18944, rope_theta=1e6, max_positions=8192, qkv_bias=True),
    "qwen2.5-0.5b": ModelArgs(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64,
                              intermediate_size=4864, rope_theta=1e6, max_positions=8192, qkv_bias=True),
    "llama-8b": ModelArgs(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                          intermediate_size=14336, rope_theta=500000.0, max_positions=8192),
    "llama-1b": ModelArgs(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
                          intermediate_size=8192, rope_theta=500000.0, max_positions=8192),
    "smollm2-135m": ModelArgs(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
                              intermediate_size=1536, rope_theta=100000.0, max_positions=8192),
}  # fmt: skip
SMOKE_SHAPES: dict[str, ModelArgs] = {
    "qwen2.5-7b": SHAPES["qwen2.5-7b"],
    "qwen2.5-0.5b": SHAPES["qwen2.5-0.5b"],
    "tiny-target": ModelArgs(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                             intermediate_size=256, max_positions=512),
    "tiny-draft": ModelArgs(vocab_size=512, dim=64, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=32,
                            intermediate_size=128, max_positions=512),
}  # fmt: skip

# (target, draft) pairs for the speculative section, the gpu-h100 profile's pair first; and the order of
# the step sections (most important first: a run cut by its time budget loses the least).
PAIRS = (("qwen2.5-7b", "qwen2.5-0.5b"), ("llama-8b", "llama-1b"))
SMOKE_PAIRS = (("tiny-target", "tiny-draft"),)
DRAFT_ONLY = ("qwen2.5-0.5b", "llama-1b")  # timed at T = 1 only

# Peak HBM/GDDR bandwidth in bytes/s by a substring of torch.cuda.get_device_name (first match wins).
PEAK_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("H800", 3.35e12),
    ("GH200", 4.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB", 1.935e12), ("A100", 1.555e12),
    ("L40S", 0.864e12), ("L40", 0.864e12), ("L4", 0.3e12), ("RTX 4090", 1.008e12), ("RTX 3090", 0.936e12),
    ("A10", 0.6e12),
)  # fmt: skip


def peak_bandwidth(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((bw for key, bw in PEAK_BANDWIDTH if key in name), None)


def build_random_model(
    args: ModelArgs, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> Transformer:
    """A Transformer with N(0, 0.02) weights created directly on `device` (an 8B model in seconds, where
    `Transformer.random` would fill 8·10⁹ numbers on the CPU first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = Transformer(args)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
    model.init_rope()
    return model.eval().requires_grad_(False)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, iters: int, warmup: int = 2) -> float:
    """Median seconds of fn() (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def time_graphed(fn: Callable[[], object], device: torch.device, *, iters: int) -> tuple[float, bool]:
    """Seconds per call of fn captured in a CUDA graph (launch overhead removed), or eager on CPU.
    Returns (seconds, graphed)."""
    if device.type != "cuda":
        return time_call(fn, device, iters=iters, warmup=1), False
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    seconds = time_call(graph.replay, device, iters=iters)
    del graph
    return seconds, True


def streamed_bytes(model: Transformer, context: int, tokens: int) -> int:
    """Bytes a decode/verify step must read: every weight except the embedding table (only T rows of it
    are gathered) plus the valid part of the KV cache."""
    seen: set[int] = set()
    total = 0
    embed_ptr = model.embed_tokens.weight.data_ptr()
    tied = model.lm_head.weight.data_ptr() == embed_ptr if hasattr(model.lm_head, "weight") else False
    for t in list(model.parameters()) + list(model.buffers()):
        ptr = t.data_ptr()
        if ptr in seen or (ptr == embed_ptr and not tied) or t.numel() == 0:
            continue
        if t is model.rope_cos or t is model.rope_sin:
            continue
        seen.add(ptr)
        total += t.numel() * t.element_size()
    a = model.args
    kv = 2 * a.n_layers * a.n_kv_heads * a.head_dim * (context + tokens) * model.dtype.itemsize
    return total + kv


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Tokens per draft/verify step when each draft token is accepted with probability alpha
    (independently): accepted prefix + the target's own token = (1 - α^(k+1)) / (1 - α)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def speculative_speedup(
    alpha: float, k: int, t_draft: float, t_verify: float, t_decode: float
) -> dict[str, float]:
    """The composed model: k draft steps + one (k+1)-token verify per step, vs one decode per token."""
    per_step = k * t_draft + t_verify
    tokens = expected_tokens_per_step(alpha, k)
    spec_tps = tokens / per_step
    ar_tps = 1.0 / t_decode
    return {"alpha": alpha, "k": k, "tokens_per_step": tokens, "step_s": per_step,
            "ar_tokens_per_s": ar_tps, "spec_tokens_per_s": spec_tps, "speedup": spec_tps / ar_tps}  # fmt: skip
