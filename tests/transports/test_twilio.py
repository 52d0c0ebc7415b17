"""The telephony endpoint against our Twilio Media Streams simulator, with real models."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from transport_support import make_config
from twilio_sim import TwilioSimulator


async def test_a_call_gets_a_mulaw_reply_with_marks_and_a_clear_on_barge_in(server, question_8k):
    async with TwilioSimulator(f"ws://127.0.0.1:{server.port}/twilio") as call:
        await call.send_audio(question_8k)
        # Silence until the reply's audio starts arriving, as a real line would carry.
        await call.send_silence_until(lambda: len(call.received_audio) >= 8000 // 2)
        heard = call.heard_pcm()
        assert np.abs(heard).max() > 1000, "the reply should be audible speech"
        assert any(e["event"] == "mark" for e in call.events), "a mark follows each reply piece"
        # The caller talks over the reply: the server must flush the phone's buffer with `clear`.
        await call.send_audio(question_8k)
        await call.send_silence_until(lambda: call.clears >= 1)
        assert call.clears >= 1
        # Marks came back (played or returned by the clear); the session is still alive and answers again.
        assert call.marks_echoed
        before = len(call.received_audio)
        await call.send_silence_until(lambda: len(call.received_audio) > before)
        await call.stop()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (scripts/system-deps.sh)")
@pytest.mark.parametrize(
    "said, action_name, logged",
    [
        ("Please transfer me to a human.", "transfer_call", "reason"),
        ("Thanks, that answers my question. Goodbye.", "end_call", "summary"),
    ],
)
async def test_a_spoken_call_action_plays_the_reply_then_marks_the_action_and_stops(
    assistant, caplog, said, action_name, logged
):
    """[skills] call_center: "please transfer me to a human" / "goodbye" (espeak-ng, not the assistant's
    voice) ends in the `specvoice:<action>` mark after the reply's audio, its echo, and a clean close (1000)
    with the reason / summary logged. The TwiML's tool_choice forces the call: the 135M default's own call
    decision is unreliable (docs/tools.md)."""
    from app.audio import resample, to_int16
    from app.server import Server
    from bench.voice_questions import synthesize

    config = make_config()
    config.skills.call_center = True
    speech = to_int16(
        resample(synthesize(said, "espeak-ng", "en-us", 150), 16000, 8000)
    )
    pad = np.zeros(4000, np.int16)
    caplog.set_level(logging.INFO, logger="app.server.twilio")
    async with Server(assistant, config) as server:
        url = f"ws://127.0.0.1:{server.port}/twilio"
        async with TwilioSimulator(url, custom_parameters={"tool_choice": action_name}) as call:
            await call.send_audio(np.concatenate([pad, speech, pad]))
            await call.send_silence_until(call.closed.is_set, timeout=180)  # the server ends the stream
    kinds = [(e["event"], e.get("mark", {}).get("name")) for e in call.events]
    action = ("mark", f"specvoice:{action_name}")
    assert action in kinds, kinds
    assert any(k == "media" for k, _ in kinds[: kinds.index(action)]), "the reply is spoken before the mark"
    assert all(k != "media" for k, _ in kinds[kinds.index(action) :]), "nothing is said after the mark"
    assert f"specvoice:{action_name}" in call.marks_echoed
    assert (call.close_code, call.close_reason) == (1000, action_name)
    assert any(f"{action_name}, {logged}:" in r.getMessage() for r in caplog.records)
    assert len(call.played_audio) == len(call.received_audio), "the whole reply was played before the stop"
