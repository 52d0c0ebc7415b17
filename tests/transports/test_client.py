"""`specvoice client` end to end: a file streamed to a live server, the reply saved as a WAV."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile
from transport_support import QUESTION_WAV, make_config

from app.cli import main
from app.server import Server


@pytest.fixture
def threaded_server(assistant):
    """A server on its own event loop thread, so the synchronous CLI can talk to it from the test."""
    loop = asyncio.new_event_loop()
    server = Server(assistant, make_config())
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(60)
    yield server
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(60)
    loop.close()


def test_client_streams_a_file_and_saves_the_reply(threaded_server, tmp_path, capsys):
    out = tmp_path / "reply.wav"
    url = f"ws://127.0.0.1:{threaded_server.port}/v1/realtime"
    assert main(["client", url, "--file", str(QUESTION_WAV), "--save", str(out), "--fast"]) == 0
    printed = capsys.readouterr().out
    assert "you:" in printed and "mountain" in printed.lower() and "assistant:" in printed
    audio, rate = soundfile.read(out, dtype="float32")
    assert rate == 24000 and len(audio) > rate // 2 and np.abs(audio).max() > 0.03


def test_client_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["client", "--file", str(tmp_path / "missing.wav")]) == 2
    assert main(["client", "ws://127.0.0.1:9/v1/realtime", "--text", "hi", "--timeout", "5"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("specvoice: error:") for line in lines), lines


def _interruptible() -> None:
    """In the child: SIGINT as a terminal gives it. An ignored or blocked SIGINT is inherited across exec,
    and after ~300 tests the pytest process may carry one (the client then never sees Ctrl-C: its stdout
    and stderr stayed empty in two full runs while it passed alone)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_client_mic_mode_over_pulseaudio_then_ctrl_c(threaded_server, pulse_server):
    """`specvoice client --mic` in its own process: hears the virtual microphone, prints the exchange, and
    stops cleanly on SIGINT (no traceback, exit 0)."""
    url = f"ws://127.0.0.1:{threaded_server.port}/v1/realtime"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "client", url, "--mic"],
        env=pulse_server.env,
        preexec_fn=_interruptible,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends if the client dies
            lines.append(line)
            if line.startswith("listening"):
                pulse_server.speak(QUESTION_WAV).wait(30)
            if line.startswith("assistant:"):
                break
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(
                f"no exit within 60 s of SIGINT; stdout {out[-2000:]!r}, stderr {err[-4000:]!r}"
            ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    transcript = "".join(lines)
    assert "mountain" in transcript.lower() and "assistant:" in transcript, (transcript, proc.stderr)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "bye" in out
