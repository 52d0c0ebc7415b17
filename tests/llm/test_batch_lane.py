"""The app's batching LLM lane (app/batch_lane.py): concurrent replies share forwards and each still gets
exactly its own tokens; ordinary lane calls and plain lanes keep working."""

from __future__ import annotations

import asyncio

import pytest
from llm_testutil import PROMPTS, SYSTEM

from app.batch_lane import BatchLane, next_delta
from app.reply_stream import Lane
from llm.engine import Engine
from llm.session import CHUNK, Session

MAX_TOKENS = 8


def _session(engine: Engine, prompt: str) -> Session:
    session = Session(engine, system_prompt=SYSTEM)
    session.extend(prompt)  # the reply's first step closes the turn and prefills the rest
    return session


async def _reply(lane: Lane, session: Session) -> list[int]:
    steps = session.generate(max_tokens=MAX_TOKENS)
    tokens: list[int] = []
    try:
        while (delta := await next_delta(lane, steps)) is not None:
            tokens += delta.token_ids
    finally:
        await lane.run(steps.close)
    return tokens


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
async def test_concurrent_replies_share_forwards_and_keep_their_tokens(smol):
    target, tokenizer = smol
    engine = Engine(target, tokenizer, drafter_kind="ngram", k_min=1, k_max=4)
    prompts = PROMPTS[4:7]
    alone = [[t for d in _session(engine, p).generate(max_tokens=MAX_TOKENS) for t in d.token_ids] for p in prompts]

    lane = BatchLane("llm", target)
    sessions = [_session(engine, p) for p in prompts]
    together = await asyncio.gather(*(_reply(lane, s) for s in sessions))
    assert together == alone
    assert max(f.rows for f in lane.forwards) >= 2, "the replies never shared a forward"
    assert sum(f.rows for f in lane.forwards) > len(lane.forwards)
    # sharing a forward, each reply drafts at most draft_budget // B - 1 tokens (3 replies: 1 draft)
    for f in lane.forwards:
        cap = 8 // f.rows if f.rows > 1 else 5
        assert f.tokens <= (f.rows - f.prefill_rows) * cap + f.prefill_rows * CHUNK
    assert all(session.finish_reason in ("length", "eos") for session in sessions)
    # an ordinary call on the same lane (an end-of-turn probe) still runs between batched steps
    assert 0.0 <= await lane.run(sessions[0].end_of_turn_probability, "Thanks for the help") <= 1.0


@pytest.mark.usefixtures("one_thread")
async def test_a_cancelled_reply_leaves_the_batch_and_the_others_finish(smol):
    target, tokenizer = smol
    engine = Engine(target, tokenizer, drafter_kind="none")
    lane = BatchLane("llm", target)
    keep, drop = _session(engine, PROMPTS[0]), _session(engine, PROMPTS[1])
    started = asyncio.Event()

    async def doomed() -> None:
        steps = drop.generate(max_tokens=40)
        try:
            while await next_delta(lane, steps) is not None:
                started.set()
        finally:
            await lane.run(steps.close)

    dropped = asyncio.create_task(doomed())
    kept = asyncio.create_task(_reply(lane, keep))
    await started.wait()  # the doomed reply has produced a delta: it is in the batch
    dropped.cancel()
    tokens = await kept
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert keep.finish_reason in ("length", "eos") and tokens
    assert drop.finish_reason == "cancelled"
    drop.discard_reply()  # the conversation's undo of a reply nobody heard still works


@pytest.mark.usefixtures("one_thread")
async def test_a_plain_lane_steps_one_reply_per_call(smol):
    target, tokenizer = smol
    engine = Engine(target, tokenizer, drafter_kind="none")
    session = _session(engine, PROMPTS[2])
    expected = [t for d in _session(engine, PROMPTS[2]).generate(max_tokens=MAX_TOKENS) for t in d.token_ids]
    assert await _reply(Lane("llm"), session) == expected
