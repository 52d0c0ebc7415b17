"""Every way in over the network: one `websockets` process serving the OpenAI-Realtime endpoint, the Twilio
Media Streams endpoint and the browser page. Thin adapters over the Conversation API (app/conversation.py).

The exports load lazily, so that `app.server.redact` (installed by the CLI for every command) does not pull
in `websockets` for commands that never serve.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InsecureBindError", "Server", "check_bind"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from app.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'app.server' has no attribute {name!r}")
