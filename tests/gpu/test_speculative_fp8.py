"""The speculative engine stays lossless with the FP8 target (greedy): drafts are checked against the FP8
target itself, so speculative output = the FP8 target's own greedy decoding, token for token — with the
fp32 model as the draft (it disagrees with the FP8 target on a few % of tokens) and with prompt lookup
(most of whose drafts are rejected), so both the accept and the reject path are exercised."""

from __future__ import annotations

import torch

from llm.drafters import ModelDrafter, NgramDrafter
from llm.engine import AdaptiveK, generate_ids

PROMPTS = ["Tell me a joke about cats.", "Why is the sky blue?", "Who wrote Hamlet?"]
NEW_TOKENS = 16


def _ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_fp8_target_speculative_equals_fp8_autoregressive(smol_fp32, smol_fp8, capsys):
    draft_model, tokenizer = smol_fp32
    eos = frozenset({tokenizer.eos_token_id})
    drafted = {"model": 0, "ngram": 0}
    accepted = {"model": 0, "ngram": 0}
    for text in PROMPTS:
        prompt = _ids(tokenizer, text)
        plain, _ = generate_ids(smol_fp8, prompt, NEW_TOKENS, eos_ids=eos)
        max_len = len(prompt) + NEW_TOKENS + 20
        for drafter in (ModelDrafter(draft_model, max_len), NgramDrafter()):
            spec, steps = generate_ids(
                smol_fp8, prompt, NEW_TOKENS, drafter=drafter, k=AdaptiveK(1, 8), eos_ids=eos
            )
            assert spec == plain, (text, drafter.name, tokenizer.decode(plain), tokenizer.decode(spec))
            drafted[drafter.name] += sum(s.drafted for s in steps)
            accepted[drafter.name] += sum(s.accepted for s in steps)
    with capsys.disabled():
        print(f"\n[fp8 speculative] fp8 target accepted {accepted['model']}/{drafted['model']} fp32-draft "
              f"tokens, {accepted['ngram']}/{drafted['ngram']} prompt-lookup tokens")  # fmt: skip
    assert accepted["model"] > drafted["model"] / 2  # the fp32 draft mostly agrees: accept path exercised
    assert accepted["ngram"] < drafted["ngram"]  # rejections happened: the check had something to catch


def test_fp8_verify_rows_equal_single_token_steps(smol_fp8, smol_fp32):
    """Per-token activation scales make each row's quantisation independent of the others in a verify
    block, so a (k+1)-token verify scores each position like k+1 single-token steps would."""
    _, tokenizer = smol_fp32
    prompt = torch.tensor(_ids(tokenizer, "Count to five."))
    block = torch.tensor([16, 17, 18, 19, 20])
    cache_a, cache_b = smol_fp8.new_cache(64), smol_fp8.new_cache(64)
    smol_fp8(prompt, cache_a, 0)
    smol_fp8(prompt, cache_b, 0)
    verify = smol_fp8(block, cache_a, len(prompt))
    single = torch.cat([smol_fp8(block[i : i + 1], cache_b, len(prompt) + i) for i in range(len(block))])
    torch.testing.assert_close(verify, single, rtol=1e-5, atol=1e-5 * float(single.abs().max()))
    assert torch.equal(verify.argmax(-1), single.argmax(-1))
