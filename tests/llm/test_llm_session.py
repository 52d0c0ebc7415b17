"""Session: incremental prefill (extend/revise == fresh prefill, no stale positions), chat template, reply
streaming, stop/cancel, barge-in truncation and discarding a preemptive reply.

Most tests use a RANDOM-WEIGHT tiny model with the real SmolLM2 tokenizer (the tests are about cache
bookkeeping and text handling; random weights also emit odd multi-byte tokens, good for delta decoding).
One test replays an extend/revise sequence on the real SmolLM2 and compares with transformers.
"""

from __future__ import annotations

import random
import threading

import pytest
import torch
from llm_testutil import SYSTEM, random_model, tiny_args

from llm.engine import Engine
from llm.session import Session, SessionError

WORDS = "what is the weather like in paris tomorrow morning and can you tell me hello hel help".split()


@pytest.fixture(scope="module")
def tokenizer(smol):
    return smol[1]


@pytest.fixture(scope="module")
def tiny_engine(tokenizer):
    model = random_model(tiny_args(vocab_size=len(tokenizer), n_layers=2, dim=32), seed=5, std=0.4)
    return Engine(model, tokenizer, drafter_kind="ngram", k_min=1, k_max=4)


def fresh_logits(engine: Engine, tokens: list[int]) -> torch.Tensor:
    return engine.target(torch.tensor(tokens), engine.target.new_cache(len(tokens)), 0)[-1]


def poison_stale(session: Session) -> None:
    """NaN everything past what the session says is cached: reading a stale position would show up."""
    n = len(session._cached)
    for k, v in zip(session.cache.k, session.cache.v, strict=True):
        k[:, :, n:] = float("nan")
        v[:, :, n:] = float("nan")


def check(session: Session, engine: Engine) -> None:
    poison_stale(session)
    ours = session.next_token_logits()
    assert torch.isfinite(ours).all(), "a stale cache position was read"
    torch.testing.assert_close(ours, fresh_logits(engine, session.tokens()), rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("one_thread")
def test_random_extend_revise_sequences_equal_fresh_prefill(tiny_engine):
    rng = random.Random(0)
    for _ in range(12):
        session = Session(tiny_engine, system_prompt=SYSTEM, chunk=4)  # small chunks: many chunk edges
        text = ""
        for _ in range(rng.randint(3, 9)):
            op = rng.random()
            if op < 0.5:
                word = rng.choice(WORDS)
                session.extend(word)
                text = f"{text} {word}".strip()
            elif op < 0.85:  # revise: keep a random prefix of the characters, maybe add a word
                text = (
                    text[: rng.randint(0, len(text))] + rng.choice(["", "lo", " there", "p"])
                ).strip() or "hi"
                session.revise(text)
            else:  # a whole reply and back to a new user turn
                if session.history[-1]["role"] == "user" and session.history[-1]["content"].strip():
                    list(session.generate(max_tokens=rng.randint(1, 6)))
                    text = ""
            if session.tokens()[-1:] != []:
                check(session, tiny_engine)


@pytest.mark.usefixtures("one_thread")
def test_streaming_prefill_uses_whole_16_token_chunks(tiny_engine):
    session = Session(tiny_engine, system_prompt=SYSTEM)
    session.extend("one two three four five six seven eight nine ten eleven twelve thirteen fourteen")
    cached, total = len(session._cached), len(session.tokens())
    assert cached > 0 and cached % 16 == 0 and total - 1 - cached < 16  # only whole chunks while speaking
    session.end_user_turn()
    assert len(session._cached) == len(session.tokens()) - 1  # all but the pending last token
    check(session, tiny_engine)


@pytest.mark.usefixtures("one_thread")
def test_chat_template_and_history_edits(tiny_engine, tokenizer):
    session = Session(tiny_engine, system_prompt=SYSTEM)
    session.add_turn("Hi there", "Hello! How can I help?")
    session.extend("What's the")
    session.extend("time?")
    assert session.history[-1] == {"role": "user", "content": "What's the time?"}
    before = session.tokens()
    session.end_user_turn()
    reply = "".join(d.text for d in session.generate(max_tokens=12))
    assert session.history[-1] == {"role": "assistant", "content": reply}
    session.discard_reply()  # preemptive reply turned out wrong: the user turn is open again
    assert session.tokens() == before
    session.extend("please")
    list(session.generate(max_tokens=8))
    session.truncate_reply("It is")
    assert session.history[-1] == {"role": "assistant", "content": "It is"}
    expected = tokenizer.apply_chat_template(session.history, tokenize=True)
    expected = expected if isinstance(expected, list) else expected["input_ids"]
    assert session.tokens() == expected
    check(session, tiny_engine)
    with pytest.raises(SessionError):
        Session(tiny_engine, system_prompt=SYSTEM).end_user_turn()


@pytest.mark.usefixtures("one_thread")
def test_streaming_deltas_stop_strings_and_cancel(tiny_engine, tokenizer):
    session = Session(tiny_engine, system_prompt=SYSTEM, seed=1)
    session.add_turn("Say something long")
    deltas = list(session.generate(max_tokens=30))
    reply_tokens = [t for d in deltas for t in d.token_ids]
    assert session.finish_reason in ("length", "eos") and len(reply_tokens) <= 30
    assert "".join(d.text for d in deltas) == tokenizer.decode(reply_tokens)
    full = tokenizer.decode(reply_tokens)

    stop = full[len(full) // 2 : len(full) // 2 + 3]
    session.discard_reply()
    stopped = "".join(d.text for d in session.generate(max_tokens=30, stop=(stop,)))
    if stop.strip():
        assert session.finish_reason == "stop" and stopped == full[: full.find(stop)]

    session.discard_reply()
    cancel = threading.Event()
    got = []
    for delta in session.generate(max_tokens=30, cancel=cancel):
        got.append(delta)
        cancel.set()
    assert session.finish_reason == "cancelled" and len(got) == 1
    session.truncate_reply(got[0].text)
    session.add_turn("And then?")
    assert len(list(session.generate(max_tokens=3))) >= 1
    check(session, tiny_engine)


@pytest.mark.usefixtures("one_thread")
async def test_agenerate_cancels_within_a_step(tiny_engine):
    session = Session(tiny_engine, system_prompt=SYSTEM, seed=2)
    session.add_turn("Count to one hundred")
    cancel = threading.Event()
    n = 0
    async for _ in session.agenerate(max_tokens=40, cancel=cancel):
        n += 1
        if n == 2:
            cancel.set()
    assert session.finish_reason == "cancelled" and n == 2
    session.discard_reply()
    assert session.history[-1]["role"] == "user"


@pytest.mark.slow
def test_real_model_incremental_prefill_matches_transformers(smol, hf_smol):
    target, tokenizer = smol
    engine = Engine(target, tokenizer, drafter_kind="none")
    session = Session(engine, system_prompt=SYSTEM)
    session.extend("hel")  # tokenises differently from the later "hello"
    session.extend("lo, could you tell me what the weather will be like in Paris tomorrow morning")
    session.revise("hello, could you tell me what the weather is like in Berlin")
    session.end_user_turn()
    check(session, engine)
    with torch.inference_mode():
        reference = hf_smol(torch.tensor([session.tokens()])).logits[0, -1]
    torch.testing.assert_close(session.next_token_logits(), reference, rtol=1e-4, atol=1e-3)
