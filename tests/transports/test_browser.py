"""The browser page in headless Chromium: a fake microphone speaks the question; the page must show the
transcript and the reply text, and play the reply's audio."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from chromium_driver import CHROMIUM, Browser
from transport_support import QUESTION_WAV, mentions_mountain

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="chromium is not installed (scripts/system-deps.sh)"
)


@pytest.fixture(scope="module")
def fake_mic_wav(tmp_path_factory):
    """The question with silence around it: Chromium reads it once (%noloop) as the microphone."""
    from app.audio import read_audio, write_wav

    speech = read_audio(QUESTION_WAV, rate=48000)
    padded = np.concatenate([np.zeros(48000, np.float32), speech, np.zeros(48000 * 4, np.float32)])
    path = tmp_path_factory.mktemp("browser") / "question.wav"
    write_wav(path, padded, 48000)
    return path


async def test_page_shows_transcript_and_plays_the_reply(server, fake_mic_wav):
    async with Browser(f"http://127.0.0.1:{server.port}/", fake_mic_wav) as page:
        await page.evaluate("document.getElementById('start').click()")
        await page.wait_for(
            "window.specvoice.replies.length > 0 && window.specvoice.audioChunksPlayed > 0", 180
        )
        state = await page.evaluate("window.specvoice")
        text = await page.evaluate("document.getElementById('log').innerText")
    assert state["errors"] == [], state["errors"]
    assert state["transcripts"] and mentions_mountain(state["transcripts"][0]), state
    assert state["replies"][0]["status"] == "completed" and state["replies"][0]["text"].strip()
    assert state["audioMsPlayed"] > 0 and state["latenciesMs"], state
    assert mentions_mountain(text) and "Assistant:" in text and "first audio" in text
