"""FP8 (float8_e4m3fn) quantisation and the scaled matmul, shared by the kernels and `llm.fp8`.

Scheme: weights per output channel (one fp32 scale per row of the [N, K] weight), activations per token
(one scale per row of the [M, K] input, computed at run time from that row's absolute maximum).

Activations can be quantised into two fp8 terms (`act_terms=2`): the row rounded to e4m3, then what that
rounding lost, rounded again with its own per-token scale. The two terms go through ONE scaled matmul as
2M rows, so the fp8 weight is still read once; decode (M ≤ 17 rows) is bound by that read, so the second
term costs next to nothing there while cutting the activation error from ~2⁻⁵ to ~2⁻⁹ relative. Measured
on SmolLM2-135M (docs/gpu.md): one term costs as many greedy tokens as the fp8 weights themselves do.

CPU emulation of `torch._scaled_mm` (which runs on CPU too, but ~100× slower): every e4m3 value is a
multiple of 2⁻⁹ below 448, so each product is a multiple of 2⁻¹⁸ below 2¹⁸ and any sum of K ≤ 2¹⁰·⁵ of
them fits in 47 bits — float64 adds them *exactly*, in any order. The emulation is therefore the exact
real-number result (`_scaled_mm`'s fp32 accumulation differs from it by ~1e-7 relative; the tests check
that), and it is batch-invariant: a row's result does not depend on how many other rows share the call.
That matters for speculative decoding: FP8 requantises every layer's input, so the tiny rounding
differences between a (k+1)-row verify and a 1-row step would otherwise flip fp8 roundings and grow
into different greedy tokens at near-ties.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
MIN_SCALE = 1e-12  # an all-zero row still gets a finite, positive scale


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric quantisation of a [..., K] tensor: (fp8 values, fp32 scales [..., 1])."""
    return quantize_activations(x, 1)


def quantize_scaled(y: torch.Tensor, scale: torch.Tensor, terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows already divided by their scale and clamped to ±448 (fp32 [M, K]; scale [M, 1]) → (fp8
    [terms·M, K], scales [terms·M, 1]) with x ≈ Σ_terms q·scale.

    terms=2: rows M..2M-1 hold the rounding residual r = y − fp8(y) (exact in fp32), quantised with its
    own scale s·s_r. The fused Triton kernel does the same arithmetic; the tests compare the two.
    """
    q_hi = y.to(FP8_DTYPE)
    if terms == 1:
        return q_hi, scale
    if terms != 2:
        raise ValueError(f"act_terms must be 1 or 2, got {terms}")
    residual = y - q_hi.float()
    r_scale = (residual.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_min(MIN_SCALE)
    q_lo = (residual * (1.0 / r_scale)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return torch.cat([q_hi, q_lo]), torch.cat([scale, scale * r_scale])


def quantize_activations(x: torch.Tensor, terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token quantisation of [M, K] into `terms` fp8 terms (1: `quantize_rows`)."""
    x32 = x.float()
    scale = (x32.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_min(MIN_SCALE)
    return quantize_scaled((x32 * (1.0 / scale)).clamp(-FP8_MAX, FP8_MAX), scale, terms)


def sum_terms(y: torch.Tensor, terms: int, out_dtype: torch.dtype) -> torch.Tensor:
    """[terms·M, N] partial products (fp32 or wider) → [M, N] in out_dtype."""
    if terms == 1:
        return y.to(out_dtype)
    m = y.shape[0] // terms
    return sum(y[i * m : (i + 1) * m] for i in range(terms)).to(out_dtype)


def partial_dtype(out_dtype: torch.dtype, terms: int, scaled_mm: bool) -> torch.dtype:
    """dtype of the per-term products before they are summed: fp32 where we control the matmul (the
    CPU emulation); with `_scaled_mm`, the output dtype itself, since some CUDA builds allow only bf16
    outputs with row-wise scales — a bf16 partial adds ~2⁻⁹ relative, far below the ~2⁻⁵ the second
    term removes."""
    return torch.float32 if terms > 1 and not scaled_mm else out_dtype


def fp8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype,
    act_terms: int = 1,
    *,
    w_dequant: torch.Tensor | None = None,
    use_scaled_mm: bool | None = None,
) -> torch.Tensor:
    """x [M, K] @ (w_q·w_scale)ᵀ with x quantised per token into `act_terms` fp8 terms, one matmul."""
    a_q, a_scale = quantize_activations(x, act_terms)
    scaled_mm = a_q.is_cuda if use_scaled_mm is None else use_scaled_mm
    partial = partial_dtype(out_dtype, act_terms, scaled_mm)
    y = fp8_matmul(a_q, a_scale, w_q, w_scale, partial, w_dequant=w_dequant, use_scaled_mm=scaled_mm)
    return sum_terms(y, act_terms, out_dtype)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An nn.Linear weight [N, K] → (fp8 [N, K], fp32 scale [N]): one scale per output channel."""
    q, scale = quantize_rows(weight)
    return q.contiguous(), scale.reshape(-1).contiguous()


_rowwise_scaled_mm_ok: dict[torch.device, bool] = {}


def _scaled_mm_rowwise(
    a_q: torch.Tensor, a_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """`torch._scaled_mm` with row-wise scales; on GPUs whose torch build lacks row-wise scaling (some
    Ada builds), unit tensor-wise scales with the row scales applied to the fp32 result instead."""
    b = w_q.t()  # [K, N], column-major as _scaled_mm wants
    sa = a_scale.reshape(-1, 1).float().contiguous()
    sb = w_scale.reshape(1, -1).float().contiguous()
    device = a_q.device
    if _rowwise_scaled_mm_ok.get(device, True):
        try:
            return torch._scaled_mm(a_q, b, scale_a=sa, scale_b=sb, out_dtype=out_dtype)
        except RuntimeError:
            if device.type == "cpu":
                raise
            _rowwise_scaled_mm_ok[device] = False
    one = torch.ones((), device=device, dtype=torch.float32)
    out = torch._scaled_mm(a_q, b, scale_a=one, scale_b=one, out_dtype=torch.float32)
    return (out * sa * sb).to(out_dtype)


def fp8_matmul(
    a_q: torch.Tensor,
    a_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype,
    *,
    w_dequant: torch.Tensor | None = None,
    use_scaled_mm: bool | None = None,
) -> torch.Tensor:
    """(a_q · a_scale) @ (w_q · w_scale)ᵀ for a_q [M, K] fp8, a_scale [M, 1], w_q [N, K] fp8, w_scale [N].

    On CUDA this is `torch._scaled_mm`. On CPU (default) it is the exact float64 emulation (module
    docstring): `w_dequant` may hold `w_q.double()` cached by the caller so the weight is not converted on
    every call.
    """
    if use_scaled_mm is None:
        use_scaled_mm = a_q.is_cuda
    if use_scaled_mm:
        return _scaled_mm_rowwise(a_q, a_scale, w_q, w_scale, out_dtype)
    w64 = w_dequant if w_dequant is not None else w_q.double()
    exact = a_q.double() @ w64.t()
    out = exact * a_scale.reshape(-1, 1).double() * w_scale.reshape(1, -1).double()
    return out.to(out_dtype)
