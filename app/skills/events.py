"""The event-planning skill as tools: one `EventStore` behind typed functions the model can call."""

from __future__ import annotations

from typing import Literal

from app.skills.events_db import EventStore, evening_plan, parse_hour
from app.tools import ToolRegistry

# One spoken example per tool, written out as a call in the tool prompt (llm/tool_format.py `tools_prompt`):
# the 135M default copies a worked example far better than it reads a listing. None of these sentences is
# in the benchmark's dev or test set (bench/data/tool_commands.json).
EXAMPLES: dict[str, list[tuple[str, dict]]] = {
    "add_guest": [("Add Olivia to the garden party, she is allergic to nuts.",
                   {"name": "Olivia", "event": "garden party", "dietary": "nut allergy", "plus_ones": 0}),
                  ("Invite Henry and his partner to the brunch.",
                   {"name": "Henry", "event": "brunch", "dietary": "", "plus_ones": 1})],
    "record_rsvp": [("Noah said no to the brunch.", {"name": "Noah", "event": "brunch", "answer": "no"}),
                    ("Zoe accepted the invitation to the garden party.",
                     {"name": "Zoe", "event": "garden party", "answer": "yes"}),
                    ("Ethan doesn't know yet if he can come to the brunch.",
                     {"name": "Ethan", "event": "brunch", "answer": "maybe"})],
    "who_has_not_answered": [("Who has not answered for the brunch?", {"event": "brunch"}),
                             ("Which guests are still undecided about the garden party?", {"event": "garden party"})],
    "plan_evening": [("Plan the brunch from ten in the morning to two in the afternoon.",
                      {"event": "brunch", "start": "ten in the morning", "end": "two in the afternoon"}),
                     ("Organise the garden party from eight until one in the morning.",
                      {"event": "garden party", "start": "eight", "end": "one in the morning"})],
    "write_toast": [("Write a toast for Lily's promotion.",
                     {"honoree": "Lily", "occasion": "promotion", "event": "Lily's promotion"}),
                    ("Say a few words for Oscar and Mia's anniversary.",
                     {"honoree": "Oscar and Mia", "occasion": "anniversary", "event": "anniversary"})],
}  # fmt: skip


def register_event_tools(registry: ToolRegistry, store: EventStore) -> ToolRegistry:
    """Add the skill's tools to `registry` (they write to `store`), with speech hints: the examples and the
    names of the events and guests in the store."""

    @registry.register
    def add_guest(name: str, event: str, dietary: str = "", plus_ones: int = 0) -> dict:
        """Add a guest to an event, with any dietary needs.

        Args:
            name: the guest's name
            event: the event, e.g. "Saturday's party"
            dietary: dietary needs, e.g. vegetarian; empty if none
            plus_ones: how many people the guest brings
        """
        return store.add_guest(event, name, dietary=dietary, plus_ones=plus_ones)

    @registry.register
    def record_rsvp(
        name: str, event: str, answer: Literal["yes", "no", "maybe"], plus_ones: int | None = None
    ) -> dict:
        """Record a guest's answer to an invitation.

        Args:
            name: the guest's name
            event: the event
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
    def write_toast(honoree: str, occasion: str, event: str) -> dict:
        """Write and save a short toast for the occasion.

        Args:
            honoree: who the toast is for
            occasion: what is celebrated, e.g. fortieth birthday
            event: the event
        """
        text = (f"Please raise your glasses to {honoree}. On this {occasion}, we are grateful for your "
                f"friendship, your laughter and every year that brought us here. To {honoree}!")  # fmt: skip
        store.save_toast(event, text)
        return {"event": event, "toast": text}

    registry.add_examples(EXAMPLES)
    registry.add_speech_hints(words=store.known_names)
    return registry
