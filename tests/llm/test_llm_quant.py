"""Weight-only quantisation from the shipped Q4_1 file (llm/quant.py) and the compiled step (llm/compiled.py).

The quantisation tests read the real default GGUF: the point is that the int4 kernel multiplies by the
file's own weights (the codes dequantise exactly to what the converted safetensors hold)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm.quant import (
    GROUP,
    Int4Linear,
    Q8Linear,
    QuantError,
    dequantize_q4_1,
    dequantize_q8_0,
    file_codes,
)


@pytest.fixture(scope="module")
def codes(llm_model_dir):
    return file_codes(llm_model_dir, n_heads=9, n_kv_heads=3)


@pytest.fixture(scope="module")
def fp32_weights(llm_model_dir):
    from safetensors import safe_open

    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
             "model.layers.7.mlp.down_proj.weight", "model.embed_tokens.weight"]  # fmt: skip
    with safe_open(str(llm_model_dir / "model.safetensors"), "pt") as f:
        return {name: f.get_tensor(name) for name in names}


def test_file_codes_dequantise_exactly_to_the_converted_weights(codes, fp32_weights):
    """Q4_1 codes (with the q/k row order undone) and the Q8_0 head reproduce the fp32 conversion bit for bit."""
    for ours, hf in (("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
                     ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight"),
                     ("blk.7.ffn_down.weight", "model.layers.7.mlp.down_proj.weight")):  # fmt: skip
        w = dequantize_q4_1(codes[f"{ours}.codes"], codes[f"{ours}.d"], codes[f"{ours}.m"])
        assert torch.equal(w, fp32_weights[hf]), ours
        assert int(codes[f"{ours}.codes"].max()) <= 15
    head = dequantize_q8_0(codes["token_embd.weight.codes8"], codes["token_embd.weight.d"])
    assert torch.equal(head, fp32_weights["model.embed_tokens.weight"])


def test_int4_linear_multiplies_by_the_file_weights(codes, fp32_weights):
    """One row: the packed kernel equals x·Wᵀ for W = the file's codes with bf16 scale/zero, and that W is
    the exact file weight up to rounding the fp16 scale and zero to bf16. More rows: the bf16 weight."""
    name = "blk.7.ffn_down.weight"
    q, d, m = codes[f"{name}.codes"], codes[f"{name}.d"], codes[f"{name}.m"]
    exact = fp32_weights["model.layers.7.mlp.down_proj.weight"]
    dense = torch.nn.Linear(exact.shape[1], exact.shape[0], bias=False).to(torch.bfloat16)
    dense.weight.data = exact.to(torch.bfloat16)
    layer = Int4Linear(q, d, m, dense)
    scale = d.to(torch.bfloat16).float()
    zero = (m + 8 * d).to(torch.bfloat16).float()
    n, k = q.shape
    kernel_w = ((q.float().view(n, k // GROUP, GROUP) - 8) * scale[..., None] + zero[..., None]).view(n, k)
    # bf16 scale/zero: each weight moves by at most |q-8|·ulp(d)/2 + ulp(zero)/2 (~2^-8 of the group range)
    bound = (8 * d.abs() + (m + 8 * d).abs()).repeat_interleave(GROUP, dim=1) * 2.0**-8
    assert ((kernel_w - exact).abs() <= bound).all()
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    got = layer(x).float()
    want = x.float() @ kernel_w.t()
    assert float((got - want).abs().max()) <= 0.01 * float(want.abs().max())  # bf16 output rounding
    # an unrelated weight would be far off: the comparison has teeth
    assert float((x.float() @ exact.flip(0).t() - want).abs().max()) > 0.1 * float(want.abs().max())
    many = torch.randn(3, 2, k).to(torch.bfloat16)
    assert torch.equal(layer(many), F.linear(many, dense.weight))


def test_q8_head_multiplies_by_the_file_head(codes):
    """The Q8_0 head split into two int4 halves: within bf16 output rounding of x·Wᵀ for the exact head."""
    codes8, d = codes["token_embd.weight.codes8"][:4096], codes["token_embd.weight.d"][:4096]
    head = dequantize_q8_0(codes8, d)
    dense = torch.nn.Linear(576, 4096, bias=False).to(torch.bfloat16)
    dense.weight.data = head.to(torch.bfloat16)
    layer = Q8Linear(codes8, d, dense)
    x = torch.randn(1, 576, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    got, want = layer(x), x.float() @ head.t()
    assert got.dtype == torch.float32
    dense_err = float((dense(x).float() - want).abs().max())  # what bf16 weights cost
    assert float((got - want).abs().max()) <= 2 * dense_err + 1e-3
    assert float((got - x.float() @ head.roll(1, 0).t()).abs().max()) > 50 * dense_err  # has teeth


def test_int4_refuses_what_it_cannot_serve(tmp_path):
    from llm_testutil import tiny_args

    from llm.model import Transformer
    from llm.quant import quantize_int4

    with pytest.raises(QuantError, match="CPU bf16"):
        quantize_int4(Transformer.random(tiny_args()), tmp_path)  # fp32
    with pytest.raises(QuantError, match="GGUF"):
        quantize_int4(Transformer.random(tiny_args(dim=64), dtype=torch.bfloat16), tmp_path)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_compiled_step_equals_eager():
    """Random weights (about the step, not the model): the compiled static 1-token step writes the same
    cache and gives the same logits as the eager forward, across positions and a rollback."""
    from llm_testutil import random_model, tiny_args

    from llm.compiled import compile_steps

    args = tiny_args(n_layers=1)
    eager, compiled = random_model(args, seed=5), random_model(args, seed=5)
    compile_steps(compiled, (1,))
    ids = torch.randint(0, args.vocab_size, (12,), generator=torch.Generator().manual_seed(1))
    a_cache, b_cache = eager.new_cache(16), compiled.new_cache(16)
    eager(ids[:6], a_cache, 0)
    compiled(ids[:6], b_cache, 0)  # 6 tokens: the eager path
    for pos in (6, 7, 8, 7, 8, 9):  # the second 7: a rollback
        a = eager(ids[pos : pos + 1], a_cache, pos)
        b = compiled(ids[pos : pos + 1], b_cache, pos)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert compiled.compiled is not None and compiled.compiled.compile_s > 0  # it did compile
