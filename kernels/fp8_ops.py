"""FP8 (float8_e4m3fn) quantisation and the scaled matmul, shared by the kernels and `llm.fp8`.

Scheme: weights per output channel (one fp32 scale per row of the [N, K] weight), activations per token
(one scale per row of the [M, K] input, computed at run time from that row's absolute maximum).

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
    x32 = x.float()
    scale = (x32.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_min(MIN_SCALE)
    q = (x32 * (1.0 / scale)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


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
