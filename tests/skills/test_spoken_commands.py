"""Spoken commands, in a voice that is not the assistant's (espeak-ng), through Whisper and SmolLM2-135M with
the skill's add_guest tool, land as rows in the skill's database. The call is forced (threshold=None): this checks the
path and argument quality, not the call-or-answer decision."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from app.skills.events import register_event_tools
from app.skills.events_db import EventStore
from app.tool_turn import tool_turn, tools_system_prompt
from app.tools import ToolRegistry

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng (scripts/system-deps.sh)"
)


def espeak(text: str, tmp_path) -> np.ndarray:
    """16 kHz float32 speech from espeak-ng."""
    from app.audio import read_audio

    path = tmp_path / "command.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(path), text], check=True)
    pad = np.zeros(8000, np.float32)  # half a second of silence each side, as a microphone would have
    return np.concatenate([pad, read_audio(path), pad])


async def test_spoken_add_guest_writes_the_row(smol_session_parts, transcriber, tmp_path):
    from llm.session import Session

    store = EventStore(tmp_path / "events.db")
    # Only the skill's add_guest tool: with all five the 135M model often picks the wrong one (docs/tools.md);
    # here the arguments (who, which diet) are what is checked, and they are the model's.
    everything = register_event_tools(ToolRegistry(), store)
    registry = ToolRegistry()
    registry.register(everything.tool("add_guest").function)
    model, tokenizer = smol_session_parts
    session = Session(
        (model, tokenizer), system_prompt=tools_system_prompt("You plan parties.", registry, tokenizer)
    )
    heard = transcriber.transcribe(espeak("Please add Maria to the party. She is vegetarian.", tmp_path)).text
    assert "maria" in heard.lower()
    turn = await tool_turn(session, registry, heard, threshold=None, max_tokens=16)
    assert turn.call.name == "add_guest" and turn.result.ok, turn
    guests = store.event(turn.call.arguments["event"])["guests"]
    assert [(g["name"].lower(), g["dietary"].lower()) for g in guests] == [("maria", "vegetarian")]
    store.close()


@pytest.fixture(scope="module")
def smol_session_parts(smol):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield smol
    torch.set_num_threads(threads)
