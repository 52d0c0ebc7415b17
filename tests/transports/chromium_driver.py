"""Headless Chromium driven over the DevTools protocol with our own websocket client (no webdriver)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network and a root user; the fake media flags feed a WAV file as the microphone.
BASE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-port=0",
    "--window-size=1280,1080",
    "--hide-scrollbars",
]


class Browser:
    """One headless Chromium showing one page; `evaluate` runs JavaScript in it."""

    def __init__(self, url: str, fake_mic_wav: Path) -> None:
        self.url = url
        self.fake_mic_wav = fake_mic_wav
        self._ids = itertools.count(1)
        self._profile = tempfile.TemporaryDirectory(prefix="specvoice-chromium-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws = None

    async def __aenter__(self) -> Browser:
        flags = [
            *BASE_FLAGS,
            f"--user-data-dir={self._profile.name}",
            f"--use-file-for-fake-audio-capture={self.fake_mic_wav}%noloop",
        ]
        self.proc = subprocess.Popen(
            [CHROMIUM, *flags, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        port = await asyncio.to_thread(self._devtools_port)
        page_ws = await asyncio.to_thread(self._page_websocket, port)
        self.ws = await connect(page_ws, max_size=None)
        await self.call("Page.enable")
        await self.call("Page.navigate", url=self.url)
        await self.wait_for(f"location.href === {json.dumps(self.url)} && document.readyState === 'complete'")
        return self

    def _devtools_port(self) -> int:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            match = re.search(rb"DevTools listening on ws://[^:]+:(\d+)/", raw)
            if match:
                return int(match.group(1))
        raise RuntimeError(f"chromium exited (code {self.proc.wait()}) before opening DevTools")

    def _page_websocket(self, port: int) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        pages = [t for t in targets if t.get("type") == "page"]
        return pages[0]["webSocketDebuggerUrl"]

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # events arriving meanwhile are not needed
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def wait_for(self, condition: str, timeout_s: float = 60.0) -> Any:
        """Wait inside the page until a JavaScript expression is truthy; return its value."""
        return await self.evaluate(
            "new Promise((resolve, reject) => { const t0 = Date.now(); const poll = () => {"
            f" let v; try {{ v = ({condition}); }} catch (e) {{ v = false; }}"
            " if (v) resolve(v); else if (Date.now() - t0 > " + str(int(timeout_s * 1000)) + ")"
            f" reject(new Error('timed out waiting for: ' + {json.dumps(condition)})); else setTimeout(poll, 50); }};"
            " poll(); })"
        )

    async def evaluate(self, expression: str) -> Any:
        """Run JavaScript (awaiting promises) in the page and return its JSON value."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def screenshot(self, path: Path) -> Path:
        """Save the whole page as it is now (beyond the window too) as a PNG."""
        import base64

        size = (await self.call("Page.getLayoutMetrics"))["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = await self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._profile.cleanup()
