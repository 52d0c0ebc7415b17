"""Attention of a block of T new query positions (1 for a draft step, k+1 for a verify step) over a
static KV cache, causal inside the block, with grouped-query heads — in one kernel launch.

Layout: q [B, H, T, D]; k_cache, v_cache [B, H_kv, L_max, D] (any strides with a unit last stride, so
views of a [B, L, H, D] cache work too). Query t of batch b is at position start[b] + t and sees keys
0 .. start[b] + t; the caller has already written the T new keys/values at start[b] .. start[b] + T - 1.
`start` may be a Python int or an int tensor [B] on the device: with a tensor nothing in the launch
depends on the position, so the step can be captured in a CUDA graph and replayed at any position
(rollback is just a smaller start).

Why one launch for the whole block: decode attention is bound by reading the cache. The kernel gives one
program all T·G query rows that share a kv head (G = H / H_kv), so every K/V block is read once per verify
step instead of once per position and head. The cache is split into chunks across programs ("split-K",
as in flash-decoding) so a single sequence still fills the GPU; partial results are merged by their
log-sum-exp in a few torch ops (captured in the same CUDA graph).
"""

from __future__ import annotations

import math

import torch

from kernels.dispatch import interpreting, mark_broken, resolve_backend


def _start_tensor(start: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(start, torch.Tensor):
        s = start.to(device=device, dtype=torch.int32).reshape(-1)
        return s.expand(batch) if s.numel() == 1 else s
    return torch.full((batch,), int(start), device=device, dtype=torch.int32)


def _check_shapes(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if q.dim() != 4 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"expected q [B,H,T,D] and equal caches [B,Hkv,L,D]; got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")  # fmt: skip
    b, h, _, d = q.shape
    if k_cache.shape[0] != b or k_cache.shape[3] != d or h % k_cache.shape[1]:
        raise ValueError(
            f"q {tuple(q.shape)} does not match cache {tuple(k_cache.shape)} (GQA needs H % H_kv == 0)"
        )


def verify_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int | torch.Tensor,
    sm_scale: float | None = None,
    accumulate: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Plain torch, fp32 softmax: the function the Triton kernel computes. `accumulate=torch.float64`
    makes each row's result independent of how many rows share the call (to fp32 precision), which the
    CPU FP8 path uses so a verify scores positions exactly like single steps (see kernels.fp8_ops)."""
    _check_shapes(q, k_cache, v_cache)
    b, h, t, d = q.shape
    h_kv = k_cache.shape[1]
    g = h // h_kv
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    length = k_cache.shape[2]
    if not isinstance(start, torch.Tensor):  # a known position: don't touch the cache beyond it
        length = min(length, int(start) + t)
    starts = _start_tensor(start, b, q.device).long()
    keys = k_cache[:, :, :length].to(accumulate)
    values = v_cache[:, :, :length].to(accumulate)
    qg = q.to(accumulate).reshape(b, h_kv, g, t, d)
    scores = torch.einsum("bkgtd,bkld->bkgtl", qg, keys) * sm_scale
    q_pos = starts[:, None] + torch.arange(t, device=q.device)[None, :]  # [B, T]
    visible = torch.arange(length, device=q.device)[None, None, :] <= q_pos[:, :, None]  # [B, T, L]
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bkgtl,bkld->bkgtd", probs, values)
    return out.reshape(b, h, t, d).to(q.dtype)


def default_num_splits(q: torch.Tensor, k_cache: torch.Tensor, block_m: int) -> int:
    """Enough cache chunks that B·H_kv·row-blocks·splits programs fill the GPU, chunks ≥ 256 keys."""
    if not q.is_cuda:
        return 1
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    b, h, t, _ = q.shape
    h_kv = k_cache.shape[1]
    programs = b * h_kv * math.ceil(t * (h // h_kv) / block_m)
    return max(1, min(math.ceil(2 * sms / programs), math.ceil(k_cache.shape[2] / 256)))


def verify_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int | torch.Tensor,
    sm_scale: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """The Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1). head_dim must be a power of two ≥ 16."""
    import triton

    from kernels import triton_kernels

    _check_shapes(q, k_cache, v_cache)
    b, h, t, d = q.shape
    h_kv, length = k_cache.shape[1], k_cache.shape[2]
    g = h // h_kv
    if d < 16 or d & (d - 1):
        raise ValueError(f"the Triton attention kernel needs a power-of-two head_dim ≥ 16, got {d}")
    for name, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name} needs a unit stride in its last dimension")
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    block_m = 16 if t * g <= 16 else 32 if t * g <= 32 else 64
    block_n = 64 if d <= 64 else 32
    splits = num_splits or default_num_splits(q, k_cache, block_m)
    chunk = triton.cdiv(triton.cdiv(length, splits), block_n) * block_n
    splits = triton.cdiv(length, chunk)
    starts = _start_tensor(start, b, q.device)
    out = torch.empty((b, h, t, d), device=q.device, dtype=q.dtype)
    if splits > 1:
        part = torch.empty((splits, b, h, t, d), device=q.device, dtype=torch.float32)
        lse = torch.empty((splits, b, h, t), device=q.device, dtype=torch.float32)
    else:
        part = lse = out  # unused
    grid = (b * h_kv, triton.cdiv(t * g, block_m), splits)
    triton_kernels.verify_attention_kernel[grid](
        q, k_cache, v_cache, starts, out, part, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h_kv, t, g, chunk, float(sm_scale),
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=splits > 1,
        DOT_F32=interpreting() or q.dtype == torch.float32,
    )  # fmt: skip
    if splits == 1:
        return out
    weights = torch.softmax(lse, dim=0)  # chunks with no visible key have lse = -inf → weight 0
    return (weights.unsqueeze(-1) * part).sum(dim=0).to(q.dtype)


def verify_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int | torch.Tensor,
    sm_scale: float | None = None,
    *,
    backend: str = "auto",
    num_splits: int | None = None,
) -> torch.Tensor:
    """Block-causal GQA attention over a static cache: Triton on CUDA, the torch reference elsewhere."""
    d = q.shape[-1]
    usable = d >= 16 and not d & (d - 1)
    if resolve_backend(backend, q, "verify_attention") == "triton" and (usable or backend == "triton"):
        try:
            return verify_attention_triton(q, k_cache, v_cache, start, sm_scale, num_splits)
        except Exception as exc:  # a compile failure on an untested GPU/Triton: fall back under "auto"
            if backend != "auto":
                raise
            mark_broken("verify_attention", exc)
    return verify_attention_reference(q, k_cache, v_cache, start, sm_scale)
