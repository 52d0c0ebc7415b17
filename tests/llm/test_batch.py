"""Batched decoding across sessions (llm/batch.py): one forward for the steps of many replies must give each
reply exactly the tokens it gets alone, and a joining reply must not wait for the others to finish."""

from __future__ import annotations

import pytest
import torch
from llm_testutil import PROMPTS, SYSTEM, random_model, tiny_args

from llm.batch import BatchScheduler
from llm.engine import Engine
from llm.model import BatchRow
from llm.session import CHUNK, Session

MAX_TOKENS = 12


@pytest.mark.usefixtures("one_thread")
def test_forward_batch_rows_equal_their_own_forwards():
    """Algorithm check on a tiny random-weight model: rows of different lengths, positions and caches
    packed in one forward give each row's own logits and hidden states, and write each row's cache only."""
    model = random_model(tiny_args(), seed=3)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 64, (n,), generator=gen).tolist() for n in (9, 20, 5)]
    batch_caches, alone_caches = [model.new_cache(64) for _ in prompts], [model.new_cache(64) for _ in prompts]
    for prompt, a, b in zip(prompts, batch_caches, alone_caches, strict=True):
        model(torch.tensor(prompt[:-3]), a, 0)
        model(torch.tensor(prompt[:-3]), b, 0)
    # a verify (3 rows, all logits), a 1-token step, a prefill chunk (no logits, hidden states)
    rows = [
        BatchRow(prompts[0][-3:], batch_caches[0], len(prompts[0]) - 3, logits="all"),
        BatchRow(prompts[1][-3:-2], batch_caches[1], len(prompts[1]) - 3, logits="last"),
        BatchRow(prompts[2][-3:], batch_caches[2], len(prompts[2]) - 3, logits="none", hidden=True),
    ]
    out = model.forward_batch(rows)
    for row, alone, (logits, hidden) in zip(rows, alone_caches, out, strict=True):
        ref_logits, ref_hidden = model(torch.tensor(row.tokens), alone, row.start, return_hidden=True)
        if row.logits == "none":
            assert logits is None
        else:
            want = ref_logits if row.logits == "all" else ref_logits[-1:]
            torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
        if row.hidden:
            torch.testing.assert_close(hidden, ref_hidden, rtol=1e-4, atol=1e-4)
        else:
            assert hidden is None
        end = row.start + len(row.tokens)
        for k_b, k_a in zip(row.cache.k, alone.k, strict=True):
            torch.testing.assert_close(k_b[:, :, :end], k_a[:, :, :end], rtol=1e-4, atol=1e-4)
            assert not k_b[:, :, end:].any()  # nothing written past the row's own positions
    with pytest.raises(ValueError, match="same cache"):
        model.forward_batch([rows[0], BatchRow([1], batch_caches[0], 30)])


def _tokens(deltas) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


@pytest.fixture(scope="module")
def engines(smol):
    target, tokenizer = smol
    plain = Engine(target, tokenizer, drafter_kind="none")
    ngram = Engine(target, tokenizer, drafter_kind="ngram", k_min=1, k_max=8)
    return plain, ngram


def _scenario(engines) -> dict[str, Session]:
    """Sessions in different states: fresh short prompt, multi-turn history, speculative (n-gram drafts),
    one whose previous reply was cut by a barge-in (its cache rolled back), and a long prompt."""
    plain, ngram = engines
    s = {
        "short": Session(plain, system_prompt=SYSTEM),
        "history": Session(plain, system_prompt=SYSTEM),
        "speculative": Session(ngram, system_prompt=SYSTEM),
        "truncated": Session(plain, system_prompt=SYSTEM),
    }
    s["short"].add_turn(PROMPTS[0])
    s["history"].add_turn(PROMPTS[1], "Spiders have eight legs.")
    s["history"].add_turn(PROMPTS[8])
    s["speculative"].add_turn(PROMPTS[6])
    s["truncated"].add_turn(PROMPTS[10])
    heard = "".join(d.text for d in s["truncated"].generate(max_tokens=8))[:12]  # a barge-in cut it here
    s["truncated"].truncate_reply(heard)
    s["truncated"].add_turn(PROMPTS[15])
    return s


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_batch_of_mixed_sessions_gives_each_its_own_tokens(engines, smol):
    """fp32 greedy identity: every session gets exactly the tokens it gets alone, with a session joining
    mid-decode (long prompt, prefilled in chunks between the others' steps)."""
    alone = _scenario(engines)
    joiner_alone = Session(engines[0], system_prompt=SYSTEM + " " + PROMPTS[20])
    joiner_alone.extend(PROMPTS[3])  # spoken: whole chunks prefilled, generate() closes the turn
    expected = {name: _tokens(s.generate(max_tokens=MAX_TOKENS)) for name, s in alone.items()}
    expected["joiner"] = _tokens(joiner_alone.generate(max_tokens=MAX_TOKENS))

    sessions = _scenario(engines)
    joiner = Session(engines[0], system_prompt=SYSTEM + " " + PROMPTS[20])
    joiner.extend(PROMPTS[3])
    scheduler = BatchScheduler(smol[0], draft_budget=64)  # room for verify rows of k <= 8 in a batch of 5
    gens = {name: scheduler.add(s.generate(max_tokens=MAX_TOKENS)) for name, s in sessions.items()}
    got: dict[str, list[int]] = {name: [] for name in [*gens, "joiner"]}

    def step() -> None:
        for gen, outcome in scheduler.step().items():
            assert outcome.error is None
            name = next(n for n, g in gens.items() if g is gen)
            got[name] += outcome.delta.token_ids if outcome.delta else []

    for _ in range(3):
        step()
    gens["joiner"] = scheduler.add(joiner.generate(max_tokens=MAX_TOKENS))
    while scheduler.live:
        step()

    assert got == expected
    assert sessions["speculative"].stats.accepted > 0, "the n-gram drafter never had a draft accepted"
    assert max(f.rows for f in scheduler.forwards) >= 4  # the joiner shared forwards with the others
    mixed = [f for f in scheduler.forwards if f.prefill_rows and f.rows > f.prefill_rows]
    assert mixed, "the joiner's prefill never shared a forward with the others' steps"
    # a long prefill never holds the others back by more than one chunk per forward
    assert all(f.tokens <= (f.rows - f.prefill_rows) * 9 + f.prefill_rows * CHUNK for f in scheduler.forwards)
    for name, session in sessions.items():
        assert session.finish_reason in ("length", "eos"), name


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_joining_session_gets_its_first_token_within_one_chunk(engines, smol):
    """A reply asked for while another decodes: its user turn was prefilled in whole chunks while the user
    spoke, so what is left (the tail and the turn's closing tokens) takes its own prefill forwards, at most
    one chunk each, and its first token comes in the very next forward — not after the other reply ends —
    while the other reply advances in every one of those forwards."""
    plain = engines[0]
    talker = Session(plain, system_prompt=SYSTEM)
    talker.add_turn(PROMPTS[2])
    scheduler = BatchScheduler(smol[0])
    first = scheduler.add(talker.generate(max_tokens=40))
    for _ in range(3):
        scheduler.step()
    joiner = Session(plain, system_prompt=SYSTEM)
    joiner.extend(PROMPTS[12] + " " + PROMPTS[13])  # prefilled in whole chunks while the user speaks
    prefilled_before = joiner.stats.prefill_tokens
    talker_steps = talker.last_reply.steps
    scheduler.add(joiner.generate(max_tokens=4))
    forwards = 0
    while joiner.last_reply.steps == 0:
        outcomes = scheduler.step()
        forwards += 1
        assert not outcomes[first].done, "the first reply ended before the joiner started: nothing tested"
    left = joiner.stats.prefill_tokens - prefilled_before
    assert 0 < left <= 2 * CHUNK
    assert forwards == -(-left // CHUNK) + 1  # its own chunks, then its first step: no waiting on the other
    assert talker.last_reply.steps == talker_steps + forwards  # the first reply never skipped a forward


def test_int4_and_q8_head_run_a_batch_of_decode_rows_packed(llm_model_dir):
    """In a batched forward (`packed_rows_limit` set) up to that many rows go through the packed int4
    kernels — each row as it would alone — and more rows through the bf16 weights."""
    from llm.quant import (
        PACKED_MAX_ROWS,
        Int4Linear,
        Q8Linear,
        dequantize_q4_1,
        dequantize_q8_0,
        file_codes,
        packed_rows_limit,
    )

    codes = file_codes(llm_model_dir, n_heads=9, n_kv_heads=3)
    name = "blk.7.ffn_down.weight"
    q, d, m = codes[f"{name}.codes"], codes[f"{name}.d"], codes[f"{name}.m"]
    dense = torch.nn.Linear(q.shape[1], q.shape[0], bias=False).to(torch.bfloat16)
    dense.weight.data = dequantize_q4_1(q, d, m).to(torch.bfloat16)
    codes8, d8 = codes["token_embd.weight.codes8"][:2048], codes["token_embd.weight.d"][:2048]
    head_dense = torch.nn.Linear(576, 2048, bias=False).to(torch.bfloat16)
    head_dense.weight.data = dequantize_q8_0(codes8, d8).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    for layer in (Int4Linear(q, d, m, dense), Q8Linear(codes8, d8, head_dense)):
        x = torch.randn(1, 9, layer.in_features, generator=gen).to(torch.bfloat16)
        n = PACKED_MAX_ROWS + 1  # more rows than a single session's forward runs packed (<= 8)
        alone = torch.cat([layer(x[:, i : i + 1]) for i in range(n)], dim=1)  # 1 row: packed
        token = packed_rows_limit.set(8)
        try:
            together = layer(x[:, :n])
            wide = layer(x)
        finally:
            packed_rows_limit.reset(token)
        torch.testing.assert_close(together, alone, rtol=1e-3, atol=1e-3)
        assert not torch.equal(layer(x[:, :n]), together)  # outside a batch, n rows run the bf16 weights
        torch.testing.assert_close(layer(x[:, : n - 1]), alone[:, : n - 1], rtol=1e-3, atol=1e-3)  # packed
        torch.testing.assert_close(wide, layer(x))  # past the limit: the bf16 weights, as without it
