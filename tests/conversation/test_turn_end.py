"""Semantic end of turn: the fused rule, its signals, the turn state machine, Realtime's settings, and a
half-duplex microphone that stays open until the reply is actually heard.

Conversation tests use speech from flite (not the assistant's voice) and push it faster than real
time, awaiting the transcription and end-of-turn work every 20 ms of audio (`settle`), so silences are
measured in audio time whatever the CPU speed.
"""

from __future__ import annotations

import numpy as np
import pytest
from conv_helpers import Driver, check_event_order, silence, words

from app.config import ConversationConfig
from app.server.realtime_schema import SessionSettings, parse_session_update
from app.turn_state import TRANSITIONS, IllegalTransition, TurnState, Utterance
from asr.endpointing import SHORT_MS, FusionParams, Logistic, Thresholds, decide, ends_sentence, load_params
from asr.smart_turn import log_mel, mel_filters


def config(**changes) -> ConversationConfig:
    base = dict(max_reply_tokens=16, output_sample_rate=16000)
    base.update(changes)
    return ConversationConfig(**base)


# -- the rule, the table, the features (no models) ----------------------------------------------------------
def test_fused_rule_turns_signals_into_a_wait() -> None:
    # A hand-made model (finished when both signals are high) to test the rule itself, not the fit.
    both = Logistic(bias=0.0, w_audio=1.0, w_text=1.0)
    params = FusionParams(both, both, both, {e: Thresholds(0.8, 0.2) for e in ("low", "medium", "high", "auto")})
    kw = dict(hangover_ms=500, max_silence_ms=2000, params=params)
    assert decide(0.99, 0.9, **kw).wait_ms == SHORT_MS  # both say finished
    assert decide(0.01, 1e-4, **kw).wait_ms == 2000  # both say not finished: up to the cap
    # unsure: a graded wait between the floor and the cap, shorter the more finished it sounds
    unsure = [decide(a, 1.0, **kw) for a in (0.35, 0.5, 0.65)]
    assert all(d.reason == "unsure" and SHORT_MS < d.wait_ms < 2000 for d in unsure), unsure
    assert unsure[0].wait_ms > unsure[1].wait_ms > unsure[2].wait_ms, unsure
    short_long = FusionParams(both, both, both, {e: Thresholds(0.8, 0.2, 1200) for e in ("low", "medium", "high", "auto")})
    assert decide(0.01, 1e-4, hangover_ms=500, max_silence_ms=2000, params=short_long).wait_ms == 1200  # long_ms
    assert decide(None, None, **kw).reason == "timer"  # nothing ready: the plain timer
    assert decide(0.01, 1e-4, hangover_ms=500, max_silence_ms=200, params=params).wait_ms == 200  # cap
    assert decide(0.99, 0.9, endpointing="fixed", **kw).wait_ms == 500
    # Whisper's closing punctuation rides with the text signal: it raises P(finished), never alone
    marked = FusionParams(*[Logistic(0.0, 1.0, 1.0, w_final=2.0)] * 3, params.thresholds)
    kw_marked = {**kw, "params": marked}
    unmarked = decide(0.5, 0.5, text_final=False, **kw_marked)
    assert decide(0.5, 0.5, text_final=True, **kw_marked).wait_ms < unmarked.wait_ms
    assert decide(0.5, None, text_final=True, **kw_marked).wait_ms == decide(0.5, None, **kw_marked).wait_ms
    assert ends_sentence("What is the capital of France? ") and ends_sentence("Well…")
    assert not ends_sentence("My order number is,") and not ends_sentence("My order number is")
    fitted = load_params()  # the shipped fit: a finished question outranks a cut one on both signals
    assert fitted.both.probability(0.9, 0.5) > fitted.both.probability(0.3, 0.001)
    for eagerness in ("low", "medium", "high", "auto"):
        t = fitted.thresholds[eagerness]
        assert 0 < t.unfinished <= t.complete < 1 and SHORT_MS < t.long_ms <= 2000
    assert fitted.thresholds["high"].complete <= fitted.thresholds["low"].complete


def test_turn_state_machine_allows_only_the_table() -> None:
    assert set(TRANSITIONS) == set(TurnState)
    u = Utterance(asr=None, start_sample=0, last_voiced_end=0, eos_wall=0.0)  # type: ignore[arg-type]
    for state in (TurnState.PAUSED, TurnState.SPEAKING, TurnState.PAUSED, TurnState.ENDED, TurnState.RESUMED,
                  TurnState.FINAL):  # fmt: skip
        u.to(state)
    with pytest.raises(IllegalTransition):
        u.to(TurnState.SPEAKING)  # a finished turn never reopens
    fresh = Utterance(asr=None, start_sample=0, last_voiced_end=0, eos_wall=0.0)  # type: ignore[arg-type]
    with pytest.raises(IllegalTransition):
        fresh.to(TurnState.FINAL)  # no final transcript without an endpoint


def test_smart_turn_features_hear_the_last_8_s_padded_in_front() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    features = log_mel(tone)
    assert features.shape == (80, 800) and features.dtype == np.float32
    assert np.array_equal(features, log_mel(np.concatenate([np.zeros(rate, np.float32), tone])))
    rng = np.random.default_rng(0)
    long = np.concatenate([rng.standard_normal(3 * rate).astype(np.float32), tone, np.zeros(7 * rate, np.float32)])
    assert np.array_equal(log_mel(long), log_mel(long[-8 * rate :]))
    band = int(np.argmax(mel_filters()[:, 1000 * 400 // rate]))  # the mel band holding 1 kHz
    assert int(np.argmax(features[:, -50:].mean(axis=1))) in (band - 1, band, band + 1)


def test_realtime_turn_detection_maps_onto_the_rule() -> None:
    base = SessionSettings()
    server = parse_session_update(base, {"turn_detection": {"type": "server_vad", "silence_duration_ms": 200}})
    assert server.conversation_changes()["max_silence_ms"] == 200
    semantic = parse_session_update(
        base, {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}}
    )
    assert semantic.conversation_changes()["eagerness"] == "high"
    plain = parse_session_update(base, {"turn_detection": {"type": "semantic_vad"}})
    assert plain.conversation_changes()["eagerness"] == "auto"
    assert parse_session_update(base, {"turn_detection": None}).conversation_changes()["turn_detection"] is None
    from app.server.session import ProtocolError

    with pytest.raises(ProtocolError):
        parse_session_update(base, {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}})
    for bad in ({"endpointing": "magic"}, {"eagerness": "eager"}, {"max_silence_ms": 0}):
        from app.conversation import _validate

        with pytest.raises(ValueError):
            _validate(ConversationConfig(**bad))


# -- the text signal (real LLM) -------------------------------------------------------------------------------
@pytest.mark.slow
def test_end_of_turn_probability_reuses_the_cache_and_leaves_the_session_as_it_was(assistant) -> None:
    session = assistant.new_session()
    session.add_turn("Hi there.", "Hello! How can I help?")
    session.revise("What is the capital of France, the country in Europe")
    logits = session.next_token_logits()
    tokens, history, cached = session.tokens(), session.history, list(session._cached)

    complete = session.end_of_turn_probability("What is the capital of France?")  # "?" stripped first
    cut = session.end_of_turn_probability("What is the capital of")
    assert complete > 20 * cut, (complete, cut)

    assert session.tokens() == tokens and session.history == history
    assert session._cached == cached
    assert torch_allclose(session.next_token_logits(), logits)
    fresh = assistant.new_session()  # no cache to reuse: the same number
    fresh.add_turn("Hi there.", "Hello! How can I help?")
    assert abs(fresh.end_of_turn_probability("What is the capital of France") - complete) < 1e-3


def torch_allclose(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-3, rtol=1e-4))


# -- the conversation ------------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_fused_rule_holds_a_thinking_pause_and_ends_a_question_fast(assistant, other_voice) -> None:
    conv = assistant.conversation(config(auto_respond=False))
    driver = Driver(conv)
    gap = silence(900)  # a speaker thinking mid-sentence: longer than any fixed timer people use
    await driver.push(np.concatenate([silence(400), other_voice("My order number is"), gap,
                                      other_voice("four five six seven."), silence(2300)]), settle_ms=20)  # fmt: skip
    await driver.push(np.concatenate([other_voice("What is the capital of France?"), silence(2300)]),
                      settle_ms=20)  # fmt: skip
    await driver.wait_for(lambda e: len(driver.of_type("transcript_final")) == 2, "two final transcripts")
    await driver.close()

    check_event_order(driver.events)
    finals = [f.text for f in driver.of_type("transcript_final")]
    assert len(driver.of_type("speech_stopped")) == 2, (finals, list(conv.endpoints))
    assert "order" in words(finals[0]) and finals[0].rstrip(".?! ").split()[-1] not in ("is", "number"), finals
    held, question = conv.endpoints
    assert question["silence_ms"] <= 300, question  # a finished question: no long wait
    assert question["reason"] == "complete", question


@pytest.mark.slow
async def test_realtime_silence_duration_200_caps_every_endpoint(assistant, other_voice) -> None:
    settings = parse_session_update(
        SessionSettings(), {"turn_detection": {"type": "server_vad", "silence_duration_ms": 200}}
    )
    conv = assistant.conversation(config(**{**settings.conversation_changes(), "auto_respond": False}))
    driver = Driver(conv)
    for sentence in ("What time is it in Tokyo?", "Please play some music."):
        await driver.push(np.concatenate([silence(300), other_voice(sentence), silence(900)]))
    await driver.wait_for(lambda e: len(driver.of_type("transcript_final")) == 2, "two final transcripts")
    await driver.close()
    endpoints = list(conv.endpoints)
    assert len(endpoints) == 2 and all(e["silence_ms"] <= 260 for e in endpoints), endpoints


@pytest.mark.slow
async def test_half_duplex_hears_words_said_200_ms_after_the_endpoint(assistant, other_voice) -> None:
    conv = assistant.conversation(config())  # echo_policy half_duplex, preemptive reply on
    driver = Driver(conv)
    await driver.push(np.concatenate([silence(400), other_voice("What is the capital of France?")]))
    for _ in range(150):  # silence until the turn ends (at most 3 s of it)
        await driver.push(silence(20), settle_ms=20)
        if conv.turn_state in (TurnState.ENDED, TurnState.FINAL):
            break
    assert conv.turn_state in (TurnState.ENDED, TurnState.FINAL)
    await driver.push(np.concatenate([silence(200), other_voice("And what about Germany?"), silence(1500)]))
    await driver.wait_for(
        lambda e: e.type == "transcript_final" and "germany" in words(e.text), "the follow-up transcribed"
    )
    final = next(e for e in driver.events if e.type == "transcript_final" and "germany" in words(e.text))
    start = driver.events.index(final)
    await driver.wait_for(lambda e: e.type == "reply_done" and driver.events.index(e) > start,
                          "a reply to the follow-up")  # fmt: skip
    await driver.close()
    check_event_order(driver.events)
    assert any(e.type == "reply_started" for e in driver.events[start:])
    user_turns = [m["content"] for m in conv.session.history if m["role"] == "user"]
    assert "germany" in words(user_turns[-1]) and conv.session.history[-1]["role"] == "assistant"


async def test_dropped_replies_count_their_llm_work_once_stopped() -> None:
    """Waste is counted when a dropped reply's pipeline has stopped, not when it is dropped (its numbers
    are only final then), and a reply that never reached the LLM counts nothing (the session's latest
    stats belong to another reply). The pipeline here is a stand-in task: the accounting is under test."""
    import asyncio

    from app.conversation_turns import TurnsAndReplies
    from app.reply_stream import Reply

    class Counter(TurnsAndReplies):
        def __init__(self) -> None:
            self.stats, self._stopping = {"preemptive_wasted_ms": 0.0}, set()

    conv, go_on = Counter(), asyncio.Event()

    async def pipeline(reply: Reply, ms: float) -> None:
        await go_on.wait()  # still generating when it is dropped
        reply.numbers.update(llm_generate_ms=ms, tokens=7.0)

    busy = Reply(lambda e: None, confirmed=False, user_text="x")
    busy.prepared = True  # its first LLM step has run
    busy.task = asyncio.ensure_future(pipeline(busy, 120.0))
    idle = Reply(lambda e: None, confirmed=False, user_text="x")
    idle.numbers["llm_generate_ms"] = 999.0  # stale numbers of a reply that never ran must not count
    conv._count_waste_when_stopped(busy, "preemptive")
    conv._count_waste_when_stopped(idle, "unheard")
    assert conv.stats["preemptive_wasted_ms"] == 0.0  # not final yet
    go_on.set()
    await conv.settle_dropped()
    assert conv.stats["preemptive_wasted_ms"] == 120.0 and conv.stats["preemptive_wasted_tokens"] == 7.0
    assert conv.stats.get("unheard_wasted_ms", 0.0) == 0.0 and not conv._stopping

