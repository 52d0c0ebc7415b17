"""The browser console in headless Chromium: a fake microphone (a WAV spoken by espeak-ng, not the
assistant's voice) asks the question; the page must show the level meter moving, the user's transcript
and the reply as chat bubbles, the turn's end of speech -> first audio figure, play the reply, and mark
the reply when the person speaks over it. A screenshot goes to the run's artifacts ($SPECVOICE_ARTIFACTS,
else the test's tmp dir) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from chromium_driver import CHROMIUM, Browser
from spoken import ESPEAK, espeak_wav
from transport_support import mentions_mountain

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None or ESPEAK is None,
    reason="chromium or espeak-ng is not installed (scripts/system-deps.sh)",
)


@pytest.fixture(scope="module")
def fake_mic_wav(tmp_path_factory):
    """The question with silence around it: Chromium reads it once (%noloop) as the microphone."""
    from app.audio import read_audio, write_wav

    folder = tmp_path_factory.mktemp("browser")
    spoken = espeak_wav("What is the tallest mountain in the world?", folder / "spoken.wav")
    speech = read_audio(spoken, rate=48000)
    padded = np.concatenate([np.zeros(48000, np.float32), speech, np.zeros(48000 * 4, np.float32)])
    write_wav(folder / "question.wav", padded, 48000)
    return folder / "question.wav"


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("SPECVOICE_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def interruption_b64(fake_mic_wav) -> str:
    """What the person says over the reply, as 24 kHz pcm16 base64 (what the page's capture sends)."""
    import base64

    from app.audio import read_audio, to_int16

    spoken = espeak_wav("Stop. Tell me a joke instead.", fake_mic_wav.parent / "stop.wav")
    return base64.b64encode(to_int16(read_audio(spoken, rate=24000)).astype("<i2").tobytes()).decode()


# Once the reply is audible, the person speaks over it: the page's own capture handler is fed their words in
# real time (20 ms frames), in place of the fake microphone, which has nothing more to say by then. The
# fake file cannot be started on cue, and an interruption that came before the reply would test nothing.
INTERRUPT_JS = """(() => {
  captureNode.port.onmessage = null;
  const bin = atob(%s);
  const pcm = new Float32Array(bin.length >> 1);
  for (let i = 0; i < pcm.length; i++) {
    const v = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
    pcm[i] = (v >= 32768 ? v - 65536 : v) / 32768;
  }
  const silence = new Float32Array(480 * 60);
  const all = new Float32Array(pcm.length + silence.length);
  all.set(pcm);
  let at = 0;
  const timer = setInterval(() => {
    if (at >= all.length) { clearInterval(timer); return; }
    onMicFrame(all.subarray(at, at + 480));
    at += 480;
  }, 20);
  return true;
})()"""


async def test_console_shows_the_turn_the_reply_and_a_barge_in(
    server_factory, fake_mic_wav, interruption_b64, artifacts
):
    import json

    async with server_factory(max_reply_tokens=64) as server:
        async with Browser(f"http://127.0.0.1:{server.port}/", fake_mic_wav) as page:
            await page.evaluate("document.getElementById('start').click()")
            await page.wait_for(
                "window.specvoice.audioChunksPlayed > 2 && window.specvoice.status === 'speaking'", 180
            )
            await page.evaluate(INTERRUPT_JS % json.dumps(interruption_b64))
            await page.wait_for(
                "window.specvoice.bargeIns > 0 && window.specvoice.transcripts.length > 1", 120
            )
            state = await page.evaluate("window.specvoice")
            bubbles = await page.evaluate(
                "[...document.querySelectorAll('#log .msg')].map(m => ({cls: m.className,"
                " text: m.querySelector('.text').textContent, meta: m.querySelector('.meta').textContent}))"
            )
            panel = await page.evaluate(
                "({last: document.getElementById('lat-last').textContent,"
                " median: document.getElementById('lat-median').textContent,"
                " barge: document.getElementById('barge-count').textContent,"
                " level: document.getElementById('level-db').textContent,"
                " audioP: document.getElementById('sig-audio').textContent})"
            )
            shot = await page.screenshot(artifacts / "browser-console.png")
    print(f"screenshot: {shot}")
    assert state["errors"] == [], state["errors"]
    assert state["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert state["levelMaxDb"] > -40 and (panel["level"] == "silent" or panel["level"].endswith("dBFS"))
    user = [b for b in bubbles if b["cls"].split()[:2] == ["msg", "user"]]
    replies = [b for b in bubbles if "assistant" in b["cls"]]
    assert user and mentions_mountain(user[0]["text"]) and "partial" not in user[0]["cls"], bubbles
    assert state["transcripts"] and mentions_mountain(state["transcripts"][0]), state
    assert replies and replies[0]["text"].strip(), bubbles
    # The turn's latency, in the reply's bubble and in the panel.
    ms = state["latenciesMs"][0]
    assert ms > 0 and f"{ms} ms to first audio" in replies[0]["meta"], (state, bubbles)
    assert panel["median"].endswith(" ms") and panel["last"].endswith(" ms"), panel
    assert state["audioMsPlayed"] > 0
    # The barge-in: playback stopped and truncated, the reply marked, what was said over it transcribed.
    assert state["truncations"] >= 1 and panel["barge"] == str(state["bargeIns"]), (state, panel)
    assert "interrupted by you" in replies[0]["meta"] and "cut" in replies[0]["cls"], bubbles
    # "completed" when the whole reply was generated before the user spoke over its playback (generation
    # outruns playback on a quiet box); the truncation above is what the barge-in changes then.
    assert state["replies"][0]["status"] in ("cancelled", "completed"), state["replies"]
    assert len(user) >= 2 and user[1]["text"].strip(), bubbles
    # End-of-turn signals: shown when the server sends them (it does to this page only), "—" otherwise.
    if state["signals"]:
        assert panel["audioP"] != "—" or state["signals"][-1]["audio_p"] is None
    else:
        assert panel["audioP"] == "—"
    assert shot.stat().st_size > 10_000


async def test_turn_signals_go_only_to_clients_that_ask(server):
    """`specvoice.turn_signals` is a vendor event: the console opts in with `session.specvoice`; a standard
    Realtime client (which never does) must never receive it. A bad opt-in value is refused, not ignored."""
    import json

    from websockets.asyncio.client import connect

    from app import events as ev

    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    async with connect(url) as console, connect(url) as standard:
        for ws in (console, standard):
            assert json.loads(await ws.recv())["type"] == "session.created"
        await console.send(json.dumps({"type": "session.update", "session": {"specvoice": "yes"}}))
        refused = json.loads(await console.recv())
        assert refused["type"] == "error" and refused["error"]["param"] == "session.specvoice", refused
        await console.send(
            json.dumps({"type": "session.update", "session": {"specvoice": {"turn_signals": True}}})
        )
        await standard.send(json.dumps({"type": "session.update", "session": {"instructions": "Be brief."}}))
        for ws in (console, standard):
            assert json.loads(await ws.recv())["type"] == "session.updated"
        # What the conversation's end-of-turn rule reports, delivered to both sessions' translators.
        signals = ev.TurnSignals(audio_p=0.91, text_p=None, silence_ms=180.0, wait_ms=220.0)
        for session in list(server.sessions):
            await session.on_event(signals)
            await session.on_event(ev.ErrorEvent("marker", "marker"))  # a standard event that follows
        got = json.loads(await console.recv())
        assert got["type"] == "specvoice.turn_signals", got
        assert (got["audio_p"], got["text_p"], got["silence_ms"], got["wait_ms"]) == (
            0.91,
            None,
            180.0,
            220.0,
        )
        assert json.loads(await console.recv())["error"]["code"] == "marker"
        assert json.loads(await standard.recv())["error"]["code"] == "marker"  # and nothing before it
