"""The event-planning skill as tools: one `EventStore` behind typed functions the model can call."""

from __future__ import annotations

from typing import Literal

from app.skills.events_db import EventStore, evening_plan, parse_hour
from app.tools import ToolRegistry

# One spoken example per tool, written out as a call in the tool prompt (llm/tool_format.py `tools_prompt`):
# the 135M default copies a worked example far better than it reads a listing. None of these sentences is
# in the benchmark's dev or test set (app/bench_data/tool_commands.json).
EXAMPLES: dict[str, list[tuple[str, dict]]] = {
    "add_guest": [("Add Olivia to the garden party, she is allergic to nuts.",
                   {"event": "garden party", "name": "Olivia", "dietary": "nut allergy", "plus_ones": 0})],
    "record_rsvp": [("Noah said no to the brunch.", {"event": "brunch", "name": "Noah", "answer": "no"})],
    "who_has_not_answered": [("Who has not answered for the brunch?", {"event": "brunch"})],
    "plan_evening": [("Plan the brunch from ten in the morning to two in the afternoon.",
                      {"event": "brunch", "start": "ten in the morning", "end": "two in the afternoon"})],
    "write_toast": [("Write a toast for Lily's promotion.",
                     {"event": "Lily's promotion", "honoree": "Lily", "occasion": "promotion"})],
}  # fmt: skip


def register_event_tools(registry: ToolRegistry, store: EventStore) -> ToolRegistry:
    """Add the skill's tools to `registry` (they write to `store`)."""

    @registry.register
    def add_guest(event: str, name: str, dietary: str = "", plus_ones: int = 0) -> dict:
        """Add a guest to an event, with any dietary needs.

        Args:
            event: the event, e.g. "Saturday's party"
            name: the guest's name
            dietary: dietary needs, e.g. vegetarian; empty if none
            plus_ones: how many people the guest brings
        """
        return store.add_guest(event, name, dietary=dietary, plus_ones=plus_ones)

    @registry.register
    def record_rsvp(
        event: str, name: str, answer: Literal["yes", "no", "maybe"], plus_ones: int | None = None
    ) -> dict:
        """Record a guest's answer to an invitation.

        Args:
            event: the event
            name: the guest's name
            answer: yes, no or maybe
            plus_ones: how many people the guest brings (unchanged if not said)
        """
        return store.set_rsvp(event, name, answer, plus_ones)

    @registry.register
    def who_has_not_answered(event: str) -> dict:
        """List the guests of an event who have not answered yes or no.

        Args:
            event: the event
        """
        return {"event": event, "unanswered": store.unanswered(event)}

    @registry.register
    def plan_evening(event: str, start: str, end: str) -> dict:
        """Plan an event's itinerary between two times.

        Args:
            event: the event
            start: when it starts, in the user's words, e.g. seven or 7 pm
            end: when it ends, in the user's words, e.g. eleven or midnight
        """
        hours = parse_hour(start), parse_hour(end)
        return {"event": event, "itinerary": store.plan_itinerary(event, evening_plan(*hours))}

    @registry.register
    def write_toast(event: str, honoree: str, occasion: str) -> dict:
        """Write and save a short toast for the occasion.

        Args:
            event: the event
            honoree: who the toast is for
            occasion: what is celebrated, e.g. fortieth birthday
        """
        text = (f"Please raise your glasses to {honoree}. On this {occasion}, we are grateful for your "
                f"friendship, your laughter and every year that brought us here. To {honoree}!")  # fmt: skip
        store.save_toast(event, text)
        return {"event": event, "toast": text}

    return registry
