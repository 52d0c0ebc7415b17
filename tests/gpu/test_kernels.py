"""Each Triton kernel against its torch reference, on CPU under TRITON_INTERPRET=1 (compiled on a GPU).

Tolerances: fp32 outputs must agree to ~1e-6 of the output's largest magnitude (same arithmetic, other
summation order). bf16 outputs may differ by two bf16 ulps of the output's largest magnitude: one for the
final fp32→bf16 cast (the interpreter truncates where torch rounds), one for what an fp32 summation-order
difference can flip — an activation that lands on an fp8 rounding tie, or a probability rounded to bf16
before the P·V product (as in flash attention).
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.attention import verify_attention, verify_attention_reference, verify_attention_triton
from kernels.dispatch import KernelUnavailable, resolve_backend
from kernels.fp8_ops import FP8_DTYPE, quantize_weight
from kernels.rmsnorm_fp8 import rmsnorm_fp8_linear, rmsnorm_fp8_linear_reference, rmsnorm_fp8_linear_triton

BF16_ULP_AT_ONE = 2.0**-7  # spacing of bf16 numbers in [1, 2)


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at |x| (elementwise), floored at the smallest normal's spacing."""
    magnitude = x.float().abs().clamp_min(2.0**-100)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * BF16_ULP_AT_ONE


# (M rows, K, N) including ragged sizes that are multiples of nothing the kernel tiles by
PROJECTION_SHAPES = [(1, 64, 48), (5, 96, 80), (17, 200, 70), (3, 576, 192)]


@pytest.mark.parametrize("shape", PROJECTION_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("act_terms", [1, 2])
def test_fused_rmsnorm_fp8_matches_reference(triton_available, device, shape, dtype, act_terms):
    m, k, n = shape
    gen = torch.Generator().manual_seed(m * 1000 + k + n)
    x = (torch.randn(m, k, generator=gen) * 3).to(dtype).to(device)
    norm_weight = (1 + 0.2 * torch.randn(k, generator=gen)).to(dtype).to(device)
    w_q, w_scale = quantize_weight((torch.randn(n, k, generator=gen) * 0.05).to(device))
    reference = rmsnorm_fp8_linear_reference(x, norm_weight, w_q, w_scale, 1e-5, dtype, act_terms).float()
    for dot_mode in (0, 2) if device.type == "cpu" else (0, 1):  # the interpreter's bf16 dot is broken
        out = rmsnorm_fp8_linear_triton(
            x, norm_weight, w_q, w_scale, 1e-5, dtype, dot_mode=dot_mode, act_terms=act_terms
        ).float()
        err = (out - reference).abs()
        if dtype == torch.float32:
            assert err.max() <= 2e-6 * reference.abs().max(), (dot_mode, err.max())
        else:
            scale_ulp = bf16_ulp(reference.abs().max())
            assert err.max() <= 2 * scale_ulp, (dot_mode, f"{err.max() / scale_ulp:.2f} ulps")


def test_two_activation_terms_remove_most_of_the_activation_error(triton_available, device):
    """Against the exact product with the same fp8 weight, one activation term leaves ~2⁻⁵ relative error
    and two leave ~2⁻⁹; the fused kernel gets the same gain as the reference."""
    gen = torch.Generator().manual_seed(11)
    m, k, n = 9, 576, 320
    x = torch.randn(m, k, generator=gen) * torch.exp(torch.randn(k, generator=gen))  # uneven channels
    g = 1 + 0.2 * torch.randn(k, generator=gen)
    w_q, w_scale = quantize_weight(torch.randn(n, k, generator=gen) * 0.05)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g
    exact = normed.double() @ (w_q.double() * w_scale.double()[:, None]).t()
    errors = {}
    for terms in (1, 2):
        ref = rmsnorm_fp8_linear_reference(x, g, w_q, w_scale, 1e-5, torch.float32, terms)
        tri = rmsnorm_fp8_linear_triton(x.to(device), g.to(device), w_q.to(device), w_scale.to(device),
                                        1e-5, torch.float32, act_terms=terms).cpu()  # fmt: skip
        errors[terms] = [float((out.double() - exact).norm() / exact.norm()) for out in (ref, tri)]
    assert 0.005 < errors[1][0] < 0.05 and 0.005 < errors[1][1] < 0.05, errors
    assert errors[2][0] < errors[1][0] / 8 and errors[2][1] < errors[1][1] / 8, errors


def test_fused_rmsnorm_fp8_3d_input_and_auto_dispatch(triton_available, device):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, generator=gen).to(device)
    g = torch.ones(64, device=device)
    w_q, w_scale = quantize_weight(torch.randn(32, 64, generator=gen).to(device))
    out = rmsnorm_fp8_linear(x, g, w_q, w_scale, 1e-6, backend="triton")
    ref = rmsnorm_fp8_linear(x, g, w_q, w_scale, 1e-6, backend="torch")
    assert out.shape == ref.shape == (2, 3, 32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the reference itself: its fp8 matmul emulation equals torch._scaled_mm
    via_scaled_mm = rmsnorm_fp8_linear_reference(x, g, w_q, w_scale, 1e-6, torch.float32, use_scaled_mm=True)
    torch.testing.assert_close(ref, via_scaled_mm, rtol=1e-5, atol=1e-5)


def test_e4m3_rounding_helper_matches_torch_cast(triton_available, device):
    """round_to_e4m3 must equal torch's round-to-nearest-even cast, subnormals, ties and carries included."""
    import triton

    from kernels.triton_kernels import round_to_e4m3_kernel

    gen = torch.Generator().manual_seed(0)
    grid_values = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    grid_values = grid_values[grid_values.isfinite()]
    midpoints = (grid_values.sort().values[1:] + grid_values.sort().values[:-1]) / 2  # exact ties
    x = torch.cat([torch.randn(4096, generator=gen) * 40, torch.randn(1024, generator=gen) * 0.01,
                   torch.tensor([31.8, -31.4, 447.9, 0.0, -0.0, 2.0**-10]), grid_values, midpoints])  # fmt: skip
    x = x.clamp(-448, 448).to(device)
    out = torch.empty_like(x)
    round_to_e4m3_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), BLOCK=1024)
    expected = x.to(FP8_DTYPE).float()
    mismatch = out != expected
    assert not mismatch.any(), (x[mismatch][:5], out[mismatch][:5], expected[mismatch][:5])


# (batch, heads, kv heads, T new positions, head_dim, cache length, start positions, splits)
ATTENTION_CASES = [
    (1, 4, 2, 1, 16, 40, [10], 1),  # one-token draft step
    (1, 9, 3, 5, 64, 100, [37], 1),  # SmolLM2 heads, k=4 verify
    (1, 9, 3, 9, 64, 130, [0], 2),  # verify at the very start of the cache
    (2, 8, 2, 17, 32, 130, [60, 91], 3),  # k=16 verify, two sequences at different positions, split-K
    (1, 6, 1, 3, 64, 70, [66], 4),  # ragged: T=3, G=6 (MQA), block ends at the cache end
]


@pytest.mark.parametrize("case", ATTENTION_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_verify_attention_matches_reference(triton_available, device, case, dtype):
    b, h, h_kv, t, d, length, starts, splits = case
    gen = torch.Generator().manual_seed(b * 100 + h * 10 + t)
    # q as a transposed view of a [B, T, H, D] projection, like the model produces
    q = torch.randn(b, t, h, d, generator=gen).to(dtype).to(device).transpose(1, 2)
    k_cache = torch.randn(b, h_kv, length, d, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(b, h_kv, length, d, generator=gen).to(dtype).to(device)
    start = torch.tensor(starts, device=device)
    reference = verify_attention_reference(q, k_cache, v_cache, start).float()
    out = verify_attention_triton(q, k_cache, v_cache, start, num_splits=splits).float()
    err = (out - reference).abs().max()
    if dtype == torch.float32:
        assert err <= 1e-5 * reference.abs().max(), err
    else:
        scale_ulp = bf16_ulp(reference.abs().max())
        assert err <= 2 * scale_ulp, f"{err / scale_ulp:.2f} ulps"


def test_attention_reference_int_and_tensor_start_agree_and_match_sdpa():
    """The reference with a tensor position (graph path) = with an int (eager) = llm.model's SDPA path."""
    from llm.model import attention as sdpa_attention

    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, 9, 5, 64, generator=gen)
    k_cache, v_cache = torch.randn(2, 1, 3, 80, 64, generator=gen)
    by_int = verify_attention_reference(q, k_cache, v_cache, 30)
    by_tensor = verify_attention_reference(q, k_cache, v_cache, torch.tensor([30]))
    torch.testing.assert_close(by_int, by_tensor, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(by_int, sdpa_attention(q, k_cache, v_cache, 30, 5), rtol=1e-5, atol=1e-5)
    assert verify_attention(q, k_cache, v_cache, 30).shape == (1, 9, 5, 64)  # auto on CPU = reference


def test_backend_choice_and_clear_errors(monkeypatch):
    cpu = torch.zeros(1)
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="kernel backend"):
        resolve_backend("cuda", cpu)
    monkeypatch.setenv("SPECVOICE_KERNELS", "torch")
    assert resolve_backend("auto", cpu) == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(KernelUnavailable, match="CUDA"):
            resolve_backend("triton", cpu)


def test_default_split_heuristic_is_one_on_cpu():
    from kernels.attention import default_num_splits

    q = torch.zeros(1, 32, 17, 128)
    assert default_num_splits(q, torch.zeros(1, 8, 4096, 128), 64) == 1
    assert math.isfinite(
        float(verify_attention_reference(q[:, :, :1], *torch.zeros(2, 1, 8, 16, 128), 3).sum())
    )
