"""Built-in skills: tools with their own storage (off by default; `[skills]` in the config).

`install_skills(assistant)` registers the enabled skills' tools on `assistant.tools`, which every
conversation of the assistant gets (docs/tools.md). Idempotent: a tool already registered is left alone.
The Twilio-only call-center tools are added per call by app/server/twilio.py, not here.
"""

from __future__ import annotations

from typing import Any


def install_skills(assistant: Any) -> list[str]:
    """Register the tools of the skills `assistant.config.skills` enables; returns the names added."""
    from app.tools import ToolRegistry

    skills = assistant.config.skills
    registry = getattr(assistant, "tools", None)
    if registry is None:
        return []
    wanted = ToolRegistry()
    if skills.events:
        from app.skills.events import register_event_tools
        from app.skills.events_db import EventStore

        register_event_tools(wanted, EventStore(skills.events_db or None))
    if skills.orders:
        from app.skills.orders import OrderStore, register_order_tools

        register_order_tools(wanted, OrderStore(skills.orders_db or None))
    added = []
    for spec in wanted.specs:
        if spec.name not in registry:
            tool = wanted.tool(spec.name)
            registry.register(tool.function, name=spec.name, timeout_s=tool.timeout_s)
            added.append(spec.name)
    if added:  # the skills' speech hints (examples, known names) come with their tools
        registry.add_examples({name: shots for name, shots in wanted.examples.items() if name in added})
        registry.add_speech_hints(wanted._sentences)
        for source in wanted._word_sources:
            registry.add_speech_hints(words=source)
    return added
