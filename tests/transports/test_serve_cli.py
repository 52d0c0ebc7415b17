"""`specvoice serve` as a user runs it: its own process, models loaded once, page + websocket, clean Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

from websockets.sync.client import connect


def test_serve_starts_answers_and_stops_cleanly_on_ctrl_c(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", "0", "--max-sessions", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_clean_env(tmp_path),
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        port = None
        for line in proc.stdout:
            output.append(line)
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "".join(output)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as resp:
            health = json.load(resp)
        assert health["status"] == "ok" and health["sessions"] == 0 and health["max_sessions"] == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
            assert b"<title>specvoice" in resp.read()
        with connect(f"ws://127.0.0.1:{port}/v1/realtime?model=anything") as ws:
            assert json.loads(ws.recv(timeout=60))["type"] == "session.created"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        output.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(output)
    assert proc.returncode == 0 and "Traceback" not in text, text
    assert "shutting down" in text


def _clean_env(tmp_path) -> dict[str, str]:
    """No user config file or SPECVOICE_* settings, and never a download (the models are cached by now)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECVOICE_") or k == "SPECVOICE_HOME"}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path), "SPECVOICE_OFFLINE": "1"}
