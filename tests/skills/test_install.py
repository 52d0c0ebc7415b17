"""`[skills]` turns the built-in skills' tools on for an assistant (install_skills), idempotently."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from app.config import load_config
from app.skills import install_skills
from app.tools import ToolRegistry


def test_enabled_skills_register_their_tools_once(tmp_path):
    config = load_config(environ={})
    assert install_skills(SimpleNamespace(config=config, tools=ToolRegistry())) == []  # off by default
    config.skills.events, config.skills.events_db = True, str(tmp_path / "events.db")
    config.skills.orders, config.skills.orders_db = True, str(tmp_path / "orders.db")
    holder = SimpleNamespace(config=config, tools=ToolRegistry())  # an Assistant's config and tools
    added = install_skills(holder)
    assert set(added) == {"add_guest", "record_rsvp", "who_has_not_answered", "plan_evening", "write_toast",
                          "lookup_order"}  # fmt: skip
    assert install_skills(holder) == [] and len(holder.tools) == 6
    found = asyncio.run(holder.tools.call("lookup_order", {"order_number": 4172}))
    assert found.output["item"] == "noise-cancelling headphones"  # the sample table, created on first use
    assert asyncio.run(holder.tools.call("lookup_order", {"order_number": 7})).output["found"] is False
    assert (tmp_path / "events.db").exists()
    # the skills' examples and the names in their data come along, for the prompt and the speech recogniser
    assert set(holder.tools.examples) >= {"add_guest", "lookup_order"}
    asyncio.run(holder.tools.call("add_guest", {"name": "Maria", "event": "Saturday's party"}))
    hints = holder.tools.speech_prompt()
    assert hints.endswith("Saturday's party, Maria.") and "Has order 1234 shipped yet?" in hints
