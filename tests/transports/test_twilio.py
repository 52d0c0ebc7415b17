"""The telephony endpoint against our Twilio Media Streams simulator, with real models."""

from __future__ import annotations

import numpy as np
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
