"""All Triton kernels of the package, at module level (Triton resolves helpers through module globals).

Import this module only through the dispatching wrappers (`kernels.rmsnorm_fp8`, `kernels.attention`):
it imports triton, and triton decides between compiling and interpreting (TRITON_INTERPRET=1) when a
kernel is decorated, i.e. when this module is first imported.
"""

import triton
import triton.language as tl


@triton.jit
def round_to_e4m3(y):
    """Round fp32 (already clamped to ±448) to the nearest e4m3 value, ties to even; the cast that
    follows is then exact. Why not cast directly: Triton's interpreter (our CPU test path) loses the carry
    when rounding overflows the mantissa (31.8 → 16 instead of 32). On GPUs the hardware cast is right, and
    these few integer ops are free next to a decode step's weight traffic."""
    bits = y.to(tl.int32, bitcast=True)
    # normal range (|y| >= 2^-6): round the 23-bit fp32 mantissa to 3 bits, ties to even
    lsb = (bits >> 20) & 1
    rounded = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)  # -1048576 == ~0xFFFFF
    # subnormal range: a fixed grid of 2^-9; adding 1.5 * 2^14 in fp32 rounds to exactly that grid
    sub = (y + 24576.0) - 24576.0
    return tl.where(tl.abs(y) < 0.015625, sub, rounded)


@triton.jit
def round_to_e4m3_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """round_to_e4m3 over a tensor (lets the tests compare it with torch's cast)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, round_to_e4m3(x), mask=offs < n)


@triton.jit
def _fp8_dot(q, w, acc, DOT_MODE: tl.constexpr):
    """acc += q @ w for fp8 tiles: DOT_MODE 0 native fp8, 1 widened to bf16 (exact), 2 fp32 (interpreter)."""
    if DOT_MODE == 0:
        return tl.dot(q, w, acc)
    elif DOT_MODE == 1:
        return tl.dot(q.to(tl.bfloat16), w.to(tl.bfloat16), acc)
    else:
        return tl.dot(q.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")


@triton.jit
def _load_row_block(x_ptr, g_ptr, rows, row_ok, kk, K, stride_xm):
    """Columns kk of the tokens `rows` and of the norm weight, as fp32 (zeros outside the tensors)."""
    x = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :],
                mask=row_ok[:, None] & (kk[None, :] < K), other=0.0).to(tl.float32)  # fmt: skip
    g = tl.load(g_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
    return x, g


@triton.jit
def rmsnorm_fp8_linear_kernel(
    x_ptr, g_ptr, w_ptr, ws_ptr, out_ptr,
    M, N, K, stride_xm, stride_wn, stride_om, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_MODE: tl.constexpr,
    ACT_TERMS: tl.constexpr = 1,
):  # fmt: skip
    """One program: BLOCK_M tokens × BLOCK_N output channels. See kernels/rmsnorm_fp8.py.

    ACT_TERMS 2: each token is also quantised a second time — the residual of its first rounding, with
    its own scale — and multiplied with the same weight tile into a second accumulator.

    DOT_MODE 0: native fp8 × fp8 tensor-core dot; 1: fp8 operands widened to bf16 in registers (exact,
    and any bf16 GPU has the instruction; decode is bound by the fp8 weight *reads*, not the math);
    2: fp32 (the interpreter, whose bf16 dot is wrong).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    # pass 1: sum of squares (for rstd) and absmax of x·g (for the fp8 scale), per token
    sumsq = tl.zeros([BLOCK_M], dtype=tl.float32)
    amax = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x, g = _load_row_block(x_ptr, g_ptr, rows, row_ok, k0 + rk, K, stride_xm)
        sumsq += tl.sum(x * x, axis=1)
        amax = tl.maximum(amax, tl.max(tl.abs(x * g[None, :]), axis=1))
    rstd = 1.0 / tl.sqrt(sumsq / K + eps)
    scale = tl.maximum(amax * rstd / 448.0, 1e-12)
    inv = rstd / scale
    # pass 1b (two terms): absmax of each token's first-rounding residual, in the scaled domain
    r_scale = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    if ACT_TERMS == 2:
        r_amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x, g = _load_row_block(x_ptr, g_ptr, rows, row_ok, k0 + rk, K, stride_xm)
            y = tl.clamp(x * g[None, :] * inv[:, None], -448.0, 448.0)
            r_amax = tl.maximum(r_amax, tl.max(tl.abs(y - round_to_e4m3(y)), axis=1))
        r_scale = tl.maximum(r_amax / 448.0, 1e-12)
    r_inv = 1.0 / r_scale
    # pass 2: quantise on the fly and multiply with this program's fp8 weight columns
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_lo = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x, g = _load_row_block(x_ptr, g_ptr, rows, row_ok, kk, K, stride_xm)
        y = tl.clamp(x * g[None, :] * inv[:, None], -448.0, 448.0)
        y_hi = round_to_e4m3(y)
        q = y_hi.to(tl.float8e4nv)
        w = tl.load(w_ptr + cols[None, :] * stride_wn + kk[:, None],
                    mask=(cols[None, :] < N) & (kk[:, None] < K), other=0.0)  # fmt: skip
        acc = _fp8_dot(q, w, acc, DOT_MODE)
        if ACT_TERMS == 2:
            lo = round_to_e4m3(tl.clamp((y - y_hi) * r_inv[:, None], -448.0, 448.0)).to(tl.float8e4nv)
            acc_lo = _fp8_dot(lo, w, acc_lo, DOT_MODE)
    ws = tl.load(ws_ptr + cols, mask=cols < N, other=0.0)
    out = acc * scale[:, None] * ws[None, :]
    if ACT_TERMS == 2:
        out += acc_lo * (scale * r_scale)[:, None] * ws[None, :]
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (cols[None, :] < N))  # fmt: skip


@triton.jit
def verify_attention_kernel(
    q_ptr, k_ptr, v_ptr, start_ptr, out_ptr, part_ptr, lse_ptr,
    sq_b, sq_h, sq_t, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_t,
    n_kv_heads, T, G, chunk, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
    DOT_F32: tl.constexpr,
):  # fmt: skip
    """One program: one (batch, kv head), BLOCK_M query rows, one chunk of the cache.

    The query rows of a program are all T = k+1 positions × all G query heads sharing this kv head
    (row r = t·G + g), so each K/V block is read from memory once for the whole verify step. Query t sits
    at position start + t and sees keys 0 .. start + t (the new keys are already in the cache).
    """
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // n_kv_heads
    kvh = pid_bh % n_kv_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < T * G
    t = rows // G
    head = kvh * G + rows % G
    d = tl.arange(0, HEAD_DIM)
    start = tl.load(start_ptr + b)
    q_pos = start + t
    q = tl.load(q_ptr + b * sq_b + head[:, None] * sq_h + t[:, None] * sq_t + d[None, :],
                mask=row_ok[:, None], other=0.0)  # fmt: skip
    kv_len = start + T
    lo = pid_s * chunk
    hi = tl.minimum(lo + chunk, kv_len)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = k_ptr + b * sk_b + kvh * sk_h
    v_base = v_ptr + b * sv_b + kvh * sv_h
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < hi
        k = tl.load(k_base + cols[None, :] * sk_l + d[:, None], mask=col_ok[None, :], other=0.0)
        if DOT_F32:  # interpreter: its tl.dot multiplies bf16 bit patterns as integers
            s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee") * sm_scale
        else:
            s = tl.dot(q, k) * sm_scale
        visible = col_ok[None, :] & (cols[None, :] <= q_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + cols[:, None] * sv_l + d[None, :], mask=col_ok[:, None], other=0.0)
        if DOT_F32:
            pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    if SPLIT:
        # partial results [splits, B, H, T, D] (fp32) and their log-sum-exp [splits, B, H, T]
        n_heads = n_kv_heads * G
        idx = ((pid_s * (tl.num_programs(0) // n_kv_heads) + b) * n_heads + head) * T + t
        tl.store(part_ptr + idx[:, None] * HEAD_DIM + d[None, :], out, mask=row_ok[:, None])
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log(l_safe))
        tl.store(lse_ptr + idx, lse, mask=row_ok)
    else:
        tl.store(out_ptr + b * so_b + head[:, None] * so_h + t[:, None] * so_t + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])  # fmt: skip
