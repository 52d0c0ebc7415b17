"""Our decoder against transformers: the real SmolLM2 (Llama, tied embeddings) and a tiny random-weight
Qwen2 (q/k/v bias, untied head) built by transformers itself; plus the loader's refusals."""

from __future__ import annotations

import pytest
import torch

from llm.loading import ModelLoadError, ensure_hf_folder
from llm.model import ModelArgs, Transformer


@pytest.mark.slow
def test_smollm2_logits_match_transformers_prefill_chunks_and_steps(smol, hf_smol):
    target, tokenizer = smol
    ids = tokenizer("The quick brown fox jumps over the lazy dog because it was in a hurry to get home.")[
        "input_ids"
    ]
    with torch.inference_mode():
        reference = hf_smol(torch.tensor([ids])).logits[0]
    cache = target.new_cache(64)
    torch.testing.assert_close(target(torch.tensor(ids), cache, 0), reference, rtol=1e-4, atol=1e-4)
    # The same positions fed as a 7-token chunk, 1-token steps and a 5-token "verify".
    cache = target.new_cache(64)
    rows = [target(torch.tensor(ids[:7]), cache, 0)]
    rows += [target(torch.tensor(ids[i : i + 1]), cache, i) for i in range(7, 10)]
    rows.append(target(torch.tensor(ids[10:]), cache, 10))
    torch.testing.assert_close(torch.cat(rows), reference, rtol=1e-4, atol=1e-3)
    last = target(torch.tensor(ids[-3:]), cache, len(ids) - 3, last_only=True)
    assert last.shape == (1, target.args.vocab_size)


@pytest.mark.usefixtures("one_thread")
def test_qwen2_with_bias_matches_transformers():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)  # fmt: skip
    hf = Qwen2ForCausalLM(config).eval()
    for name, p in hf.named_parameters():
        if name.endswith("bias"):
            p.data.normal_(0, 0.5)  # Qwen2 initialises biases to zero: make them matter
    ours = Transformer.from_state_dict(ModelArgs.from_hf_config(config.to_dict()), hf.state_dict())
    assert ours.args.qkv_bias and not ours.args.tie_embeddings
    ids = torch.randint(0, 96, (1, 12))
    with torch.inference_mode():
        reference = hf(ids).logits[0]
    cache = ours.new_cache(32)
    got = torch.cat([ours(ids[0, :5], cache, 0), ours(ids[0, 5:], cache, 5)])
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4)


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="unsupported model_type"):
        ModelArgs.from_hf_config({"model_type": "gpt2"})
    with pytest.raises(ModelLoadError):
        ensure_hf_folder(tmp_path / "missing.gguf")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError):
        ensure_hf_folder(tmp_path)
    args = ModelArgs(
        vocab_size=8, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4, intermediate_size=8
    )
    model = Transformer.random(args)
    with pytest.raises(ValueError, match="do not fit"):
        model(torch.tensor([1, 2, 3]), model.new_cache(4), 2)


@pytest.mark.usefixtures("one_thread")
def test_return_hidden_is_the_final_norm_state_of_the_logit_positions():
    """Random weights (an API test): the hidden state must be what lm_head reads, at the same positions."""
    from llm_testutil import random_model, tiny_args

    model = random_model(tiny_args(), seed=3)
    ids = torch.randint(0, 64, (9,))
    plain = model(ids, model.new_cache(32), 0)
    logits, hidden = model(ids, model.new_cache(32), 0, return_hidden=True)
    assert hidden.shape == (1, 9, model.args.dim)
    torch.testing.assert_close(logits, plain)
    torch.testing.assert_close(model.lm_head(hidden)[0].float(), logits)
    last, last_hidden = model(ids, model.new_cache(32), 0, last_only=True, return_hidden=True)
    assert last_hidden.shape == (1, 1, model.args.dim)
    torch.testing.assert_close(last_hidden[0, 0], hidden[0, -1])
    torch.testing.assert_close(last, plain[-1:])
