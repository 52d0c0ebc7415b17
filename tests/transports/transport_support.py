"""Helpers shared by the transport tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

from pathlib import Path

from app.config import load_config

QUESTION_WAV = Path(__file__).resolve().parents[2] / "assets" / "question.wav"  # "...tallest mountain..."


def make_config(max_reply_tokens: int = 24, **server_settings):
    config = load_config(environ={})
    config.server.port = 0
    config.llm.max_reply_tokens = max_reply_tokens  # short replies keep the suite fast
    for name, value in server_settings.items():
        config.set(f"server.{name}", value)
    return config


def mentions_mountain(text: str) -> bool:
    return "mountain" in text.lower()
