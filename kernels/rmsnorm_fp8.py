"""Fused RMSNorm → per-token FP8 quantisation → FP8 projection, in one kernel launch.

Unfused, a decode step normalises the hidden state (write), reads it back to find each token's absmax
(read), writes the fp8 copy (write) and reads it again in the matmul (read), in three launches. Fused, each
program reads its tokens' hidden states (tiny at decode: M ≤ 17 rows) and streams its slice of the fp8
weight once: the weight read is the only traffic that scales with the model, which is what decode is
bound by.

Semantics (both versions), for x [M, K], norm weight g [K], fp8 weight W [N, K] with row scales s_w [N]:
    rstd   = 1 / sqrt(mean(x²) + eps)                    (fp32)
    s_x    = max(|x · g|) · rstd / 448                   (per token; the absmax of the normalised row)
    y      = clamp(x · g · (rstd / s_x), ±448);  q = fp8(y)
    out    = (q @ Wᵀ) · s_x · s_w                         (fp32 accumulate, cast to out_dtype)
With act_terms=2 the residual r = y − q gets its own per-token scale s_r = max|r| / 448 and a second fp8
term: out += (fp8(r / s_r) @ Wᵀ) · s_x · s_r · s_w — same weight tiles, a second accumulator
(see `kernels.fp8_ops`).
Unlike an unfused HF RMSNorm in bf16, the normalised row is never rounded to bf16 before quantisation.
"""

from __future__ import annotations

import torch

from kernels.dispatch import interpreting, mark_broken, resolve_backend
from kernels.fp8_ops import FP8_MAX, MIN_SCALE, fp8_matmul, partial_dtype, quantize_scaled, sum_terms


def rmsnorm_fp8_linear_reference(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
    act_terms: int = 1,
    *,
    w_dequant: torch.Tensor | None = None,
    use_scaled_mm: bool | None = None,
) -> torch.Tensor:
    """Plain torch: the function the Triton kernel computes (see the module docstring)."""
    shape = x.shape
    x32 = x.reshape(-1, shape[-1]).float()
    g = norm_weight.float()
    rstd = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    xg = x32 * g
    scale = (xg.abs().amax(dim=-1, keepdim=True) * rstd / FP8_MAX).clamp_min(MIN_SCALE)
    q, scales = quantize_scaled((xg * (rstd / scale)).clamp(-FP8_MAX, FP8_MAX), scale, act_terms)
    scaled_mm = q.is_cuda if use_scaled_mm is None else use_scaled_mm
    partial = partial_dtype(out_dtype, act_terms, scaled_mm)
    out = fp8_matmul(q, scales, w_q, w_scale, partial, w_dequant=w_dequant, use_scaled_mm=scaled_mm)
    return sum_terms(out, act_terms, out_dtype).reshape(*shape[:-1], w_q.shape[0])


def _kernel():
    """Imported on first use, so TRITON_INTERPRET set after our import (tests) is honoured."""
    from kernels import triton_kernels

    return triton_kernels.rmsnorm_fp8_linear_kernel


def _pick_blocks(m: int, n: int) -> tuple[int, int, int]:
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_n = 64 if n >= 2048 else 32
    return block_m, block_n, 128


def rmsnorm_fp8_linear_triton(
    x: torch.Tensor, norm_weight: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, eps: float,
    out_dtype: torch.dtype, dot_mode: int | None = None, act_terms: int = 1,
) -> torch.Tensor:  # fmt: skip
    """The fused Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1). dot_mode: see the kernel; default
    1 (bf16-widened dot) on GPUs, 2 (fp32) under the interpreter."""
    import triton

    shape = x.shape
    k = shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n = w_q.shape[0]
    if w_q.shape[1] != k or w_q.stride(-1) != 1:
        raise ValueError(f"fp8 weight must be a contiguous [N, {k}] tensor, got {tuple(w_q.shape)}")
    m = x2.shape[0]
    out = torch.empty((m, n), device=x.device, dtype=out_dtype)
    block_m, block_n, block_k = _pick_blocks(m, n)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _kernel()[grid](
        x2, norm_weight, w_q, w_scale, out, m, n, k, x2.stride(0), w_q.stride(0), out.stride(0), float(eps),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        DOT_MODE=(2 if interpreting() else 1) if dot_mode is None else dot_mode, ACT_TERMS=act_terms,
    )  # fmt: skip
    return out.reshape(*shape[:-1], n)


def rmsnorm_fp8_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype | None = None,
    act_terms: int = 1,
    *,
    backend: str = "auto",
    w_dequant: torch.Tensor | None = None,
) -> torch.Tensor:
    """RMSNorm(x)·g projected by an fp8 weight: Triton on CUDA, the torch reference elsewhere."""
    out_dtype = out_dtype or x.dtype
    if resolve_backend(backend, x, "rmsnorm_fp8_linear") == "triton":
        try:
            return rmsnorm_fp8_linear_triton(
                x, norm_weight, w_q, w_scale, eps, out_dtype, act_terms=act_terms
            )
        except Exception as exc:  # a compile failure on an untested GPU/Triton: fall back under "auto"
            if backend != "auto":
                raise
            mark_broken("rmsnorm_fp8_linear", exc)
    return rmsnorm_fp8_linear_reference(
        x, norm_weight, w_q, w_scale, eps, out_dtype, act_terms, w_dequant=w_dequant
    )
