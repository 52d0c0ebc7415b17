"""FP8 linear layers on the real SmolLM2-135M weights (CPU: exact emulation of `torch._scaled_mm`).

The model under test is what the fp8 backend builds by default: GPTQ-rounded e4m3 weights (calibrated on
the packaged text, none of whose prompts is scored here) with one scale per output channel, activations
quantised per token into two fp8 terms. Bounds, measured here and stated so they can fail: a
round-to-nearest e4m3 weight has a relative (Frobenius) error of ~2.6 % (3 mantissa bits), asserted
≤ 3.5 %; GPTQ's output error on hidden states of unseen prompts is well below round-to-nearest's (see the
test). Greedy agreement is measured teacher-forced: the FP8 model predicts each next token of the fp32
model's own greedy continuation (so one early disagreement does not make every later position count as
wrong).
"""

from __future__ import annotations

import pytest
import torch

from kernels.fp8_ops import fp8_linear, fp8_matmul, quantize_rows, quantize_weight
from llm.fp8 import FP8Linear, FusedRMSNormFP8Linear, convert_to_fp8, fp8_linears, fuse_norms, weight_bytes

PROMPTS = [
    "What is the capital of France?", "Tell me a joke about cats.", "How do I boil an egg?",
    "What's the weather like on Mars?", "Give me a synonym for happy.", "Why is the sky blue?",
    "Name three fruits.", "What time zone is London in?", "How far is the moon?",
    "Can you recommend a good book?", "What is two plus two?", "Explain gravity in one sentence.",
    "Who wrote Hamlet?", "What do bees make?", "How many legs does a spider have?",
    "What's a good name for a dog?", "Translate hello into Spanish.", "What is the boiling point of water?",
    "Why do we sleep?", "Describe the ocean.",
]  # fmt: skip
NEW_TOKENS = 16


def _chat_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture(scope="session")
def fp32_greedy(llm_model_dir, smol_fp32) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, a greedy fp32 continuation) per prompt, generated in one left-padded batch by
    transformers (20× fewer forwards than one prompt at a time); agreement is then measured against our
    own fp32 model's teacher-forced choices on these texts."""
    from transformers import AutoModelForCausalLM

    _, tokenizer = smol_fp32
    hf = AutoModelForCausalLM.from_pretrained(llm_model_dir, dtype=torch.float32).eval()
    prompts = [_chat_ids(tokenizer, t) for t in PROMPTS]
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                          pad_token_id=pad)  # fmt: skip
    pairs = []
    for prompt, row in zip(prompts, out[:, width:].tolist(), strict=True):
        end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        pairs.append((prompt, row[:end]))
    return pairs


@pytest.fixture(scope="session")
def held_out_inputs(smol_fp32) -> dict[str, torch.Tensor]:
    """The input each linear layer of the fp32 model sees on two scored prompts (not calibration text)."""
    model, tokenizer = smol_fp32
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, []).append(a[0][0].detach()))
             for n, m in model.named_modules() if type(m) is torch.nn.Linear and n != "lm_head"]  # fmt: skip
    try:
        for text in ("Tell me something interesting about octopuses.", PROMPTS[3]):
            ids = torch.tensor(_chat_ids(tokenizer, text))
            model(ids, model.new_cache(len(ids)), 0)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(xs) for n, xs in inputs.items()}


def _teacher_forced_agreement(model, sequences) -> tuple[int, int]:
    agree = total = 0
    for prompt, continuation in sequences:
        full = torch.tensor(prompt + continuation)
        logits = model(full[:-1], model.new_cache(len(full)), 0)[len(prompt) - 1 :]
        agree += int((logits.argmax(-1) == torch.tensor(continuation)).sum())
        total += len(continuation)
    return agree, total


def test_weight_quantisation_error_on_real_weights(smol_fp32):
    model, _ = smol_fp32
    errors = {}
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear and name != "lm_head":
            w = module.weight.detach()
            q, scale = quantize_weight(w)
            assert q.dtype == torch.float8_e4m3fn and scale.shape == (w.shape[0],)
            errors[name] = float((q.float() * scale[:, None] - w).norm() / w.norm())
    assert len(errors) == 30 * 7
    assert max(errors.values()) <= 0.035, max(errors.items(), key=lambda kv: kv[1])


def test_calibration_text_is_packaged_and_disjoint_from_scored_prompts():
    from llm.gptq import calibration_texts

    items = calibration_texts()
    assert len(items) >= 64 and all(item["reply"].strip() for item in items)
    assert not {item["prompt"] for item in items} & set(PROMPTS)


def test_gptq_weights_keep_the_format_and_cut_output_error(smol_fp32, smol_fp8, held_out_inputs):
    """Same format as round-to-nearest: e4m3 codes and one scale per output channel, that scale searched
    within one binade above amax/448 (so no weight is clipped). On hidden states of prompts it was not
    calibrated on, its output error is far below rounding to nearest (measured: median 0.35×, worst layer
    0.49×)."""
    model, _ = smol_fp32
    ratios = {}
    for name, layer in fp8_linears(smol_fp8):
        w = model.get_submodule(name).weight.detach()
        rtn_q, rtn_scale = quantize_weight(w)
        assert bool((layer.weight_scale >= rtn_scale * (1 - 1e-6)).all())
        assert bool((layer.weight_scale < 2 * rtn_scale).all())
        assert layer.weight_fp8.dtype == torch.float8_e4m3fn and not torch.equal(layer.weight_fp8, rtn_q)
        x = held_out_inputs[name].double()
        ref = x @ w.double().t()
        errors = [float((x @ (q.double() * s.double()[:, None]).t() - ref).norm() / ref.norm())
                  for q, s in ((layer.weight_fp8, layer.weight_scale), (rtn_q, rtn_scale))]  # fmt: skip
        ratios[name] = errors[0] / errors[1]
    values = sorted(ratios.values())
    median = values[len(values) // 2]
    print(f"\n[gptq] output error vs round-to-nearest: median {median:.2f}×, worst {values[-1]:.2f}×")
    assert median <= 0.5, median
    assert values[-1] <= 0.7, max(ratios.items(), key=lambda kv: kv[1])


def test_fp8_linear_vs_fp32_on_real_hidden_states(smol_fp32, smol_fp8, held_out_inputs):
    """Every FP8 layer's output vs its fp32 layer on real inputs (measured worst 1.3 %; one activation
    term with round-to-nearest weights: 4.7 %), and the CPU emulation vs torch._scaled_mm on the same
    quantised operands, for one and two activation terms."""
    model, _ = smol_fp32
    fp8_layers = dict(fp8_linears(smol_fp8))
    worst = 0.0
    for name, x in held_out_inputs.items():
        ref = x @ model.get_submodule(name).weight.t()
        out = fp8_layers[name](x)
        worst = max(worst, float((out - ref).norm() / ref.norm()))
    print(f"\n[fp8 layers] worst output error vs fp32: {worst:.4f}")
    assert worst <= 0.025, worst
    # the emulation is torch._scaled_mm's arithmetic (scaled_mm on CPU is slow: check a few layers)
    for name in ("layers.0.self_attn.q_proj", "layers.15.mlp.down_proj"):
        layer, x = fp8_layers[name], held_out_inputs[name][:12]
        x_q, x_scale = quantize_rows(x)
        emulated = fp8_matmul(x_q, x_scale, layer.weight_fp8, layer.weight_scale, torch.float32)
        oracle = fp8_matmul(
            x_q, x_scale, layer.weight_fp8, layer.weight_scale, torch.float32, use_scaled_mm=True
        )
        torch.testing.assert_close(emulated, oracle, rtol=1e-5, atol=1e-5 * float(oracle.abs().max()))
        two = [fp8_linear(x, layer.weight_fp8, layer.weight_scale, torch.float32, 2, use_scaled_mm=mm)
               for mm in (False, True)]  # fmt: skip
        torch.testing.assert_close(two[0], two[1], rtol=1e-5, atol=1e-5 * float(two[1].abs().max()))


def test_conversion_keeps_lm_head_embeddings_norms_and_halves_bytes(smol_fp8, smol_fp32):
    model, _ = smol_fp32
    assert type(smol_fp8.lm_head) is torch.nn.Linear and smol_fp8.lm_head.weight.dtype == torch.float32
    assert smol_fp8.embed_tokens.weight.dtype == torch.float32
    assert len(fp8_linears(smol_fp8)) == 210
    layers = [m for _, m in fp8_linears(smol_fp8)]
    fp8_bytes = sum(m.weight_fp8.numel() for m in layers)  # 1 byte per weight instead of 4
    scale_bytes = sum(4 * m.weight_scale.numel() for m in layers)
    assert weight_bytes(smol_fp8) == weight_bytes(model) - 3 * fp8_bytes + scale_bytes


def test_fp8_greedy_agreement_with_fp32(smol_fp32, smol_fp8, fp32_greedy, record_property, capsys):
    """The issue's bar: ≥ 95 % over ≥ 20 prompts (measured: see docs/gpu.md; bf16 vs fp32: 97.6 %).
    Round-to-nearest weights with one activation term reach only ~92 % on this model, whose greedy tokens
    are often near-ties (42 % lead by < 1.9 logits). Also: no flip of a token fp32 leads by ≥ 2.5 logits;
    a broken quantiser scores near 0 %."""
    fp32_model, _ = smol_fp32
    agree = total = confident_flips = follows = 0
    for prompt, continuation in fp32_greedy:
        full = torch.tensor(prompt + continuation)
        rows = slice(len(prompt) - 1, None)
        fp8_choice = smol_fp8(full[:-1], smol_fp8.new_cache(len(full)), 0)[rows].argmax(-1)
        fp32_logits = fp32_model(full[:-1], fp32_model.new_cache(len(full)), 0)[rows]
        fp32_choice = fp32_logits.argmax(-1)
        follows += int((fp32_choice == torch.tensor(continuation)).sum())
        top2 = fp32_logits.topk(2, dim=-1).values
        margin = top2[:, 0] - top2[:, 1]
        same = fp8_choice == fp32_choice
        agree += int(same.sum())
        total += len(continuation)
        confident_flips += int(((~same) & (margin >= 2.5)).sum())
    record_property("agreement", agree / total)
    with capsys.disabled():
        print(f"\n[fp8 agreement] greedy tokens, fp8 vs fp32, teacher-forced: {agree}/{total} = "
              f"{agree / total:.3f} over {len(fp32_greedy)} prompts; confident flips: {confident_flips}")  # fmt: skip
    assert follows >= 0.97 * total  # the texts are this fp32 model's greedy choices (HF batch ≈ ours)
    assert len(fp32_greedy) >= 20 and total >= 20 * 5
    assert agree / total >= 0.95
    assert confident_flips == 0


def test_fused_norm_projection_equals_unfused_on_real_model(llm_model_dir, smol_fp8):
    """fuse_norms only moves the RMSNorm into the projection (same fp8 weights): same logits up to fp8
    rounding ties of the normalised activations."""
    from llm.loading import load_model

    fused, tokenizer = load_model(llm_model_dir, dtype=torch.float32, device="cpu")
    convert_to_fp8(fused)
    fused.load_state_dict(smol_fp8.state_dict())  # the fixture's GPTQ codes and scales
    assert fuse_norms(fused) == 30 * 5
    assert isinstance(fused.layers[0].self_attn.q_proj, FusedRMSNormFP8Linear)
    assert isinstance(fused.layers[0].mlp.down_proj, FP8Linear)
    ids = torch.tensor(_chat_ids(tokenizer, "Name a color."))
    a = fused(ids, fused.new_cache(len(ids)), 0)
    b = smol_fp8(ids, smol_fp8.new_cache(len(ids)), 0)
    same = (a.argmax(-1) == b.argmax(-1)).float().mean()
    print(f"\n[fused norm] argmax agreement with unfused: {float(same):.3f}; logits rel. diff "
          f"{float((a - b).norm() / b.norm()):.2e}")  # fmt: skip
    assert same >= 0.97 and float((a - b).norm() / b.norm()) <= 0.01
    # one fused layer on its own: identical math to RMSNorm → FP8Linear, but without the fp32 detour
    layer = fused.layers[3].self_attn.k_proj
    x = torch.randn(4, 576)
    norm = smol_fp8.layers[3].input_layernorm
    unfused = smol_fp8.layers[3].self_attn.k_proj(norm(x))
    assert float((layer(x) - unfused).norm() / unfused.norm()) <= 0.01
