"""A Twilio Media Streams simulator written to the protocol (no open faithful one exists).

It plays the phone side of a bidirectional stream: sends `connected`, `start` (with the TwiML's
`customParameters`), 20 ms μ-law `media` frames and `stop`; plays received `media` in real time, echoing each
`mark` once the audio before it has been "played", and on `clear` drops the queued audio and returns every
pending mark at once, as Twilio does. When the server closes the WebSocket (the end of `<Connect><Stream>`),
`closed` is set and `close_code` / `close_reason` say how.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.server.codecs import ulaw_decode, ulaw_encode

FRAME = 160  # 20 ms at 8 kHz


class TwilioSimulator:
    def __init__(self, url: str, custom_parameters: dict[str, str] | None = None) -> None:
        self.url = url
        self.custom_parameters = custom_parameters or {}
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ws: ClientConnection | None = None
        self.stream_sid = "MZ" + "0" * 30
        self.sequence = 0
        self.received_audio = bytearray()  # μ-law the caller heard
        self.played_audio = bytearray()
        self.marks_echoed: list[str] = []
        self.clears = 0
        self.events: list[dict] = []
        self._queue: list[tuple[str, bytes | str]] = []  # ("media", bytes) | ("mark", name)
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> TwilioSimulator:
        self.ws = await connect(self.url)
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": "AC" + "0" * 32,
                    "callSid": "CA" + "0" * 32,
                    "tracks": ["inbound"],
                    "customParameters": self.custom_parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._play())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()

    async def _send(self, message: dict) -> None:
        self.sequence += 1
        await self.ws.send(json.dumps({**message, "sequenceNumber": str(self.sequence)}))

    async def send_audio(self, pcm8k: np.ndarray, realtime: bool = False) -> None:
        """The caller speaks: 20 ms μ-law frames (paced like a live call when `realtime`)."""
        payload = ulaw_encode(pcm8k)
        started = time.perf_counter()
        for index, start in enumerate(range(0, len(payload), FRAME)):
            chunk = payload[start : start + FRAME]
            await self._send(
                {
                    "event": "media",
                    "streamSid": self.stream_sid,
                    "media": {
                        "track": "inbound",
                        "chunk": str(index + 1),
                        "timestamp": str(index * 20),
                        "payload": base64.b64encode(chunk).decode(),
                    },
                }
            )
            if realtime:
                await asyncio.sleep(max(0.0, started + (index + 1) * 0.02 - time.perf_counter()))

    async def send_silence_until(self, condition, timeout: float = 120.0) -> None:
        """Keep the line open with real-time silence (a phone always sends frames) until `condition()`."""
        silence = np.zeros(FRAME, np.int16)
        deadline = time.perf_counter() + timeout
        while not condition():
            if time.perf_counter() > deadline:
                raise TimeoutError("the condition never became true")
            if self.closed.is_set():
                raise ConnectionError(f"the server closed the stream ({self.close_code} {self.close_reason})")
            try:
                await self.send_audio(silence, realtime=True)
            except ConnectionClosed:
                await self.closed.wait()  # the receive loop records how

    async def stop(self) -> None:
        await self._send(
            {"event": "stop", "streamSid": self.stream_sid, "stop": {"callSid": "CA" + "0" * 32}}
        )

    async def _receive(self) -> None:
        try:
            await self._receive_messages()
        except ConnectionClosed:
            pass
        finally:
            self.close_code, self.close_reason = self.ws.close_code, self.ws.close_reason
            self.closed.set()

    async def _receive_messages(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            self.events.append(message)
            assert message.get("streamSid") == self.stream_sid, message
            kind = message["event"]
            if kind == "media":
                audio = base64.b64decode(message["media"]["payload"])
                self.received_audio += audio
                self._queue.append(("media", audio))
            elif kind == "mark":
                self._queue.append(("mark", message["mark"]["name"]))
            elif kind == "clear":
                self.clears += 1
                pending = [item for kind_, item in self._queue if kind_ == "mark"]
                self._queue.clear()
                for name in pending:
                    await self._echo_mark(name)
            self._changed.set()

    async def _echo_mark(self, name: str) -> None:
        self.marks_echoed.append(name)
        if self.closed.is_set():
            return
        await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _play(self) -> None:
        """The phone's speaker: audio takes its real duration; a mark comes back when reached."""
        while True:
            if not self._queue:
                self._changed.clear()
                await self._changed.wait()
                continue
            kind, item = self._queue.pop(0)
            if kind == "mark":
                await self._echo_mark(item)
            else:
                self.played_audio += item
                await asyncio.sleep(len(item) / 8000)

    def heard_pcm(self) -> np.ndarray:
        return ulaw_decode(bytes(self.received_audio))
