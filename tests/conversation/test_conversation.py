"""The conversation loop end to end with the real models and Piper-spoken questions."""

from __future__ import annotations

import asyncio

import pytest
from conv_helpers import Driver, check_event_order, check_stages, silence, words

from app.config import ConversationConfig

pytestmark = pytest.mark.slow


def config(**changes) -> ConversationConfig:
    base = dict(max_reply_tokens=24, output_sample_rate=24000)
    base.update(changes)
    return ConversationConfig(**base)


async def test_spoken_question_gets_a_spoken_reply_in_a_valid_event_order(assistant, question_audio):
    conv = assistant.conversation(config())
    driver = Driver(conv)
    await driver.push(question_audio("What is the capital of France?"))
    done = await driver.wait_for(lambda e: e.type == "metrics", "metrics")
    await driver.close()

    check_event_order(driver.events, output_rate=24000)
    finals = driver.of_type("transcript_final")
    assert len(finals) == 1 and words(finals[0].text) == words("What is the capital of France?")
    partials = driver.of_type("transcript_partial")
    assert partials, "no partial transcripts while speaking"
    for before, after in zip(partials, partials[1:], strict=False):
        assert after.committed.startswith(before.committed)  # committed text only grows
    assert len(driver.of_type("reply_started")) == 1
    reply_text = "".join(e.text for e in driver.of_type("reply_text_delta"))
    assert driver.of_type("reply_done")[0].text == reply_text.strip() != ""
    audio_ms = sum(e.duration_ms for e in driver.of_type("reply_audio"))
    assert audio_ms > 300
    timings = done.timings_ms
    assert {"eos_to_endpoint_ms", "eos_to_first_audio_ms", "endpoint_to_first_audio_ms"} <= set(timings)
    assert timings["preemptive"] == 1.0  # the reply prepared during the silence was the one played
    check_stages(timings)
    # Incremental prefill cached (most of) the conversation while the user spoke: the reply prefilled less than
    # its whole prompt, and at least the turn's end and the assistant header.
    tokenizer, system = conv.session.tokenizer, conv.session.history[0]["content"]
    prompt = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{finals[0].text}<|im_end|>\n"
              "<|im_start|>assistant\n")  # fmt: skip
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 5 <= timings["prefill_tokens_before_first_token"] < prompt_tokens - 16
    history = conv.session.history
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert history[1]["content"] == finals[0].text


async def test_jfk_final_transcript_matches_offline(assistant, jfk_audio, transcriber):
    # jfk pauses for up to ~1.3 s mid-speech: a long hangover keeps it one turn.
    conv = assistant.conversation(
        config(endpointing="fixed", hangover_ms=2500, max_silence_ms=2500, auto_respond=False)
    )
    driver = Driver(conv)
    await driver.push(jfk_audio)
    await driver.push(silence(2800))
    final = await driver.wait_for(lambda e: e.type == "transcript_final", "transcript_final")
    await driver.close()
    check_event_order(driver.events)
    assert len(driver.of_type("speech_started")) == 1
    assert words(final.text) == words(transcriber.transcribe(jfk_audio).text)
    assert not driver.of_type("reply_started")  # auto_respond=False


async def test_user_resuming_after_a_short_pause_gets_no_stray_reply(assistant, question_audio):
    # A 400 ms pause: longer than the preemptive trigger (64 ms), well inside a fixed 700 ms timer (so the
    # test does not depend on Piper's random prosody moving the VAD's end of speech by ~100 ms).
    audio = question_audio(
        "Can you tell me the name of", "the largest planet in our solar system?", pause_ms=400
    )
    conv = assistant.conversation(config(endpointing="fixed", hangover_ms=700))
    driver = Driver(conv)
    await driver.push(audio)
    await driver.wait_for(lambda e: e.type == "metrics", "metrics")
    replies = list(conv._replies.values())  # close() lets go of them
    await driver.close()

    check_event_order(driver.events)
    assert len(driver.of_type("speech_stopped")) == 1  # no endpoint in the pause
    started = driver.of_type("reply_started")
    assert len(started) == 1
    assert {e.reply_id for e in driver.events if hasattr(e, "reply_id")} == {started[0].reply_id}
    discarded = [r for r in replies if r.discarded]
    assert discarded, "a preemptive reply should have been started in the pause (and dropped)"
    assert conv.stats["preemptive_discarded"] == len(discarded) and conv.stats["preemptive_used"] == 1
    final = driver.of_type("transcript_final")[0].text
    assert {"name", "largest", "planet"} <= set(words(final))
    user_turns = [m for m in conv.session.history if m["role"] == "user"]
    assert [m["content"] for m in user_turns] == [final]  # the dropped reply left no trace


async def test_barge_in_stops_the_reply_and_keeps_only_the_played_words(assistant, question_audio, speak):
    conv = assistant.conversation(config(echo_policy="full_duplex", max_reply_tokens=48))
    driver = Driver(conv)
    # A tail past the longest end-of-turn wait (max_silence_ms 2 s): this test is about the barge-in, not
    # about how soon the semantic rule trusts this request to be finished.
    await driver.push(question_audio("Tell me a long story about a brave little dragon.", tail_ms=2500))
    first = await driver.wait_for(lambda e: e.type == "reply_audio", "reply_audio")
    await driver.wait_for(
        lambda e: (
            e.type == "reply_audio" and sum(x.duration_ms for x in driver.of_type("reply_audio")) > 1500
        ),
        "1.5 s of reply audio",
    )
    conv.played(first.reply_id, 1200.0)  # what the sink says it has played when the user cuts in
    await driver.push(speak("Please wait a moment."))
    interrupted = await driver.wait_for(lambda e: e.type == "interrupted", "interrupted")
    cut = driver.events.index(interrupted)
    await driver.push(silence(1500))
    await driver.wait_for(lambda e: e.type == "metrics" and e.reply_id != first.reply_id, "second reply")
    reply = conv._replies[first.reply_id]  # close() lets go of it
    await driver.close()

    check_event_order(driver.events)
    after = [e for e in driver.events[cut + 1 :] if getattr(e, "reply_id", None) == first.reply_id]
    assert all(e.type == "metrics" for e in after), [e.type for e in after]  # nothing more was said
    from tts.stream import words_heard

    assert interrupted.spoken_text == words_heard(reply.pieces, 1200.0)
    assert interrupted.spoken_text and len(interrupted.spoken_text) < len(reply.text)
    assert reply.text.strip().startswith(interrupted.spoken_text.rstrip(",.!?"))
    history = conv.session.history
    assistant_turns = [m["content"] for m in history if m["role"] == "assistant"]
    assert assistant_turns[0] == interrupted.spoken_text  # history holds only what was heard
    assert {"wait", "moment"} & set(words(history[3]["content"]))  # the barge-in became the next user turn


async def test_two_conversations_share_models_without_sharing_state(assistant, question_audio):
    a = Driver(assistant.conversation(config()))
    b = Driver(assistant.conversation(config(output_sample_rate=16000)))
    # 2.5 s of silence after the question: the end of turn never needs more (max_silence_ms is 2 s).
    await asyncio.gather(a.push(question_audio("What color is the sky?", tail_ms=2500)),
                         b.conv.send_text("Name a fruit."))  # fmt: skip
    await asyncio.gather(
        a.wait_for(lambda e: e.type == "metrics", "metrics A"),
        b.wait_for(lambda e: e.type == "metrics", "metrics B"),
    )
    await a.close()
    await b.close()

    check_event_order(a.events, output_rate=24000)
    check_event_order(b.events, output_rate=16000)
    assert not b.of_type("transcript_final") and not b.of_type("speech_started")  # text-only turn
    ids_a = {e.reply_id for e in a.events if hasattr(e, "reply_id")}
    ids_b = {e.reply_id for e in b.events if hasattr(e, "reply_id")}
    assert len(ids_a) == len(ids_b) == 1 and not ids_a & ids_b
    users_a = [m["content"] for m in a.conv.session.history if m["role"] == "user"]
    users_b = [m["content"] for m in b.conv.session.history if m["role"] == "user"]
    assert users_b == ["Name a fruit."]
    assert len(users_a) == 1 and "sky" in words(users_a[0])


async def test_manual_commit_and_bad_input(assistant, question_audio):
    conv = assistant.conversation(config(turn_detection=None, auto_respond=False))
    driver = Driver(conv)
    await driver.push(question_audio("Good morning.", tail_ms=300), rate=16000)
    assert words(await conv.commit()) == ["good", "morning"]
    assert not driver.of_type("speech_started")  # manual mode: no VAD events
    assert await conv.commit() == ""  # nothing left to commit: an error event, not an exception
    await driver.wait_for(lambda e: e.type == "error", "error")
    with pytest.raises(ValueError):
        await conv.push_audio(b"\x00", 16000)
    with pytest.raises(ValueError):
        await conv.push_audio(silence(100), 0)
    with pytest.raises(ValueError):
        conv.update(echo_policy="loud")
    await driver.close()
    with pytest.raises(RuntimeError):
        await conv.push_audio(silence(100), 16000)


async def test_half_duplex_ignores_the_assistants_own_voice(assistant, question_audio, speak):
    conv = assistant.conversation(config())  # echo_policy defaults to half_duplex (loudspeakers)
    driver = Driver(conv)
    await driver.push(question_audio("What is the capital of France?", tail_ms=600))
    first = await driver.wait_for(lambda e: e.type == "reply_audio", "reply_audio")
    await driver.push(speak("Okay."))  # the speaker's sound leaking into the mic while the reply plays
    await driver.wait_for(lambda e: e.type == "metrics", "metrics")
    assert len(driver.of_type("speech_started")) == 1 and not driver.of_type("interrupted")
    reply = conv._replies[first.reply_id]
    await driver.push(silence(reply.audio_ms + conv.config.echo_tail_ms + 200))  # playback is over...
    await driver.push(speak("Thank you."))  # ...so the mic is open again
    await driver.wait_for(lambda e: len(driver.of_type("speech_started")) == 2, "speech after playback")
    await driver.close()
    check_event_order(driver.events)
    assert driver.of_type("reply_done")
