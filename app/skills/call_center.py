"""Call-center actions as tools: `transfer_call(reason)` and `end_call(summary)`.

The tools only *ask* for the action: each returns at once and hands a `CallAction` to `on_action`, which
the transport carries out after the model's closing words (the Twilio transport, app/server/twilio.py,
sends a `transfer_call` / `end_call` mark and then stops the stream; docs/support-bot.md). Without a
transport the actions are just recorded (`CallActions.requested`), which is what the benchmark and the
text API see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from app.tools import ToolRegistry

log = logging.getLogger(__name__)
MAX_TEXT = 300  # a reason or summary longer than this is cut (it goes into a mark name and a log line)


EXAMPLES: dict[str, list[tuple[str, dict]]] = {  # for the tool prompt (see app/skills/events.py)
    "transfer_call": [("Can somebody help me with a damaged parcel?", {"reason": "damaged parcel"}),
                      ("Is there a person I can talk to?", {"reason": "caller asked for a person"})],
    "end_call": [("Great, that answers it. Bye!", {"summary": "Caller's question answered."}),
                 ("No, that was all. Have a nice day.", {"summary": "Nothing else needed."})],
}


class CallActionKind(str, Enum):
    TRANSFER = "transfer_call"
    END = "end_call"


@dataclass(frozen=True)
class CallAction:
    kind: CallActionKind
    text: str  # the reason (transfer) or the summary (end)


class CallActions:
    """What the model asked for on one call; `on_action` (optional) is told about each request."""

    def __init__(self, on_action: Callable[[CallAction], None] | None = None) -> None:
        self.requested: list[CallAction] = []
        self.on_action = on_action

    def request(self, kind: CallActionKind, text: str) -> dict:
        action = CallAction(kind, " ".join(text.split())[:MAX_TEXT])
        self.requested.append(action)
        log.info("call action requested: %s: %s", action.kind.value, action.text)
        if self.on_action is not None:
            self.on_action(action)
        return {
            "status": "transferring" if kind is CallActionKind.TRANSFER else "ending",
            "text": action.text,
        }


def register_call_center_tools(registry: ToolRegistry, actions: CallActions) -> ToolRegistry:
    """Add `transfer_call` and `end_call` to `registry`; requests go to `actions`."""

    @registry.register
    def transfer_call(reason: str) -> dict:
        """Transfer the caller to a human agent, when they ask for a person or the bot cannot help.

        Args:
            reason: why, in a few words, e.g. refund request
        """
        return actions.request(CallActionKind.TRANSFER, reason)

    @registry.register(free_text=("summary",))
    def end_call(summary: str) -> dict:
        """End the call when the caller is done or says goodbye.

        Args:
            summary: one sentence on what the call was about
        """
        return actions.request(CallActionKind.END, summary)

    registry.add_examples(EXAMPLES)
    return registry
