"""Fixtures for the transport tests: an in-process server over the shared real assistant, spoken questions."""

from __future__ import annotations

import numpy as np
import pulse_harness
import pytest
from transport_support import QUESTION_WAV, make_config

from app.server import Server


@pytest.fixture
async def server(assistant):
    async with Server(assistant, make_config(max_sessions=4, max_message_bytes=256 * 1024)) as srv:
        yield srv


@pytest.fixture
def server_factory(assistant):
    """Start a server with other settings: `async with server_factory(max_sessions=1) as srv`."""

    def _make(**settings):
        return Server(assistant, make_config(**settings))  # max_reply_tokens=... or server.<name>=...

    return _make


@pytest.fixture(scope="session")
def question_24k() -> np.ndarray:
    from app.audio import read_audio, to_int16

    return to_int16(read_audio(QUESTION_WAV, rate=24000))


@pytest.fixture(scope="session")
def question_8k() -> np.ndarray:
    from app.audio import read_audio, to_int16

    return to_int16(read_audio(QUESTION_WAV, rate=8000))


@pytest.fixture
def pulse_server():
    """A private PulseAudio server (virtual microphone + recorded speakers) for this process and its children."""
    if pulse_harness.available() is not None:
        pytest.skip(pulse_harness.available())
    server = pulse_harness.PulseServer().start()
    server.apply_env()
    try:
        yield server
    finally:
        server.stop()
