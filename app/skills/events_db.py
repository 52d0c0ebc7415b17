"""The event-planning skill's database: events, guests (RSVP, plus-ones, dietary needs), itinerary, toasts.

SQLite through the standard library, a real file: schema migrations by `PRAGMA user_version`, WAL journal,
`synchronous=FULL` (a committed write is on disk before `commit` returns, so killing the process never loses
it), foreign keys on, and every change in one transaction (`with self._tx()`), so a kill mid-write leaves
either all of a change or none of it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.skills.sqlite_file import data_path, open_database

RSVP = ("yes", "no", "maybe", "pending")

MIGRATIONS = [
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE CHECK (length(name) BETWEEN 1 AND 200),
        date TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL DEFAULT (datetime('now'))
    );
    CREATE TABLE guests (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        name TEXT NOT NULL COLLATE NOCASE CHECK (length(name) BETWEEN 1 AND 200),
        rsvp TEXT NOT NULL DEFAULT 'pending' CHECK (rsvp IN ('yes', 'no', 'maybe', 'pending')),
        plus_ones INTEGER NOT NULL DEFAULT 0 CHECK (plus_ones BETWEEN 0 AND 20),
        dietary TEXT NOT NULL DEFAULT '',
        UNIQUE (event_id, name)
    );
    CREATE TABLE itinerary (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        starts TEXT NOT NULL CHECK (starts GLOB '[0-2][0-9]:[0-5][0-9]'),
        title TEXT NOT NULL
    );
    CREATE TABLE toasts (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        text TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (datetime('now'))
    );
    """,
]


class EventsError(ValueError):
    """A request the data does not allow (unknown event, bad RSVP): the message is for the user."""


def default_path() -> Path:
    return data_path("events.db")


class EventStore:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else default_path()
        self._db = open_database(self.path)
        self._migrate()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise EventsError(f"{self.path} was written by a newer specvoice (schema {version})")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    # -- writes ------------------------------------------------------------------------------------------
    def _event_id(self, db: sqlite3.Connection, event: str, create: bool = False) -> int:
        row = db.execute("SELECT id FROM events WHERE name = ?", (event.strip(),)).fetchone()
        if row is not None:
            return row[0]
        if not create:
            raise EventsError(f"there is no event called {event!r}")
        return db.execute("INSERT INTO events (name) VALUES (?)", (event.strip(),)).lastrowid

    def create_event(self, name: str, date: str = "") -> dict[str, Any]:
        with self._tx() as db:
            event_id = self._event_id(db, name, create=True)
            if date:
                db.execute("UPDATE events SET date = ? WHERE id = ?", (date, event_id))
        return self.event(name)

    def add_guest(self, event: str, name: str, rsvp: str = "pending", plus_ones: int = 0,
                  dietary: str = "") -> dict[str, Any]:  # fmt: skip
        """Add or update a guest (the event is created if new: "add Maria to Saturday's party")."""
        if rsvp not in RSVP:
            raise EventsError(f"RSVP must be one of {', '.join(RSVP)}")
        with self._tx() as db:
            event_id = self._event_id(db, event, create=True)
            db.execute(
                "INSERT INTO guests (event_id, name, rsvp, plus_ones, dietary) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (event_id, name) DO UPDATE SET rsvp = excluded.rsvp, "
                "plus_ones = excluded.plus_ones, dietary = CASE WHEN excluded.dietary = '' "
                "THEN guests.dietary ELSE excluded.dietary END",
                (event_id, name.strip(), rsvp, plus_ones, dietary.strip()),
            )
        return {
            "event": event,
            "guest": name.strip(),
            "rsvp": rsvp,
            "plus_ones": plus_ones,
            "dietary": dietary,
        }

    def set_rsvp(self, event: str, name: str, rsvp: str, plus_ones: int | None = None) -> dict[str, Any]:
        if rsvp not in RSVP:
            raise EventsError(f"RSVP must be one of {', '.join(RSVP)}")
        with self._tx() as db:
            event_id = self._event_id(db, event)
            changed = db.execute(
                "UPDATE guests SET rsvp = ?, plus_ones = coalesce(?, plus_ones) WHERE event_id = ? AND name = ?",
                (rsvp, plus_ones, event_id, name.strip()),
            ).rowcount
            if not changed:
                raise EventsError(f"{name} is not on the guest list of {event}")
        return {"event": event, "guest": name, "rsvp": rsvp}

    def plan_itinerary(self, event: str, items: list[tuple[str, str]]) -> list[dict[str, str]]:
        """Replace the event's itinerary with (HH:MM, title) items, all or nothing."""
        with self._tx() as db:
            event_id = self._event_id(db, event, create=True)
            db.execute("DELETE FROM itinerary WHERE event_id = ?", (event_id,))
            db.executemany(
                "INSERT INTO itinerary (event_id, starts, title) VALUES (?, ?, ?)",
                [(event_id, starts, title) for starts, title in items],
            )
        return [{"starts": s, "title": t} for s, t in items]

    def save_toast(self, event: str, text: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO toasts (event_id, text) VALUES (?, ?)", (self._event_id(db, event, True), text)
            )

    # -- reads -------------------------------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT e.name, e.date, count(g.id) AS guests, "
            "coalesce(sum(CASE WHEN g.rsvp = 'yes' THEN 1 + g.plus_ones END), 0) AS attending "
            "FROM events e LEFT JOIN guests g ON g.event_id = e.id GROUP BY e.id ORDER BY e.id"
        ).fetchall()
        return [dict(r) for r in rows]

    def event(self, name: str) -> dict[str, Any]:
        event_id = self._event_id(self._db, name)
        row = self._db.execute("SELECT name, date FROM events WHERE id = ?", (event_id,)).fetchone()
        guests = self._db.execute(
            "SELECT name, rsvp, plus_ones, dietary FROM guests WHERE event_id = ? ORDER BY id", (event_id,)
        ).fetchall()
        items = self._db.execute(
            "SELECT starts, title FROM itinerary WHERE event_id = ? ORDER BY starts, id", (event_id,)
        ).fetchall()
        toasts = self._db.execute(
            "SELECT text FROM toasts WHERE event_id = ? ORDER BY id", (event_id,)
        ).fetchall()
        return {
            **dict(row),
            "guests": [dict(g) for g in guests],
            "itinerary": [dict(i) for i in items],
            "toasts": [t[0] for t in toasts],
        }

    def known_names(self, limit: int = 200) -> list[str]:
        """Event and guest names (newest first, at most `limit`): the speech recogniser's hints."""
        rows = self._db.execute(
            "SELECT name FROM (SELECT name, id, 0 AS kind FROM events UNION ALL "
            "SELECT name, id, 1 AS kind FROM guests) ORDER BY kind, id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return list(dict.fromkeys(r[0] for r in rows))

    def unanswered(self, event: str) -> list[str]:
        event_id = self._event_id(self._db, event)
        rows = self._db.execute(
            "SELECT name FROM guests WHERE event_id = ? AND rsvp IN ('pending', 'maybe') ORDER BY id",
            (event_id,),
        ).fetchall()
        return [r[0] for r in rows]

    def export(self) -> list[dict[str, Any]]:
        return [self.event(e["name"]) for e in self.events()]


_HOUR_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}  # fmt: skip
_MORNING = ("am", "a m", "morning")
_AFTERNOON = ("pm", "p m", "afternoon", "evening", "night", "tonight")


def parse_hour(said: str) -> int:
    """A time as people say it -> an hour 0-23: "7", "seven", "7 pm", "19:00", "noon", "midnight",
    "ten in the morning". Without a morning/afternoon word, 1-11 mean the evening (the skill plans
    evenings, and "from seven to eleven" means 19 to 23). EventsError when there is no time in it."""
    import re

    text = " " + re.sub(r"[^a-z0-9: ]+", " ", said.lower()) + " "
    if " noon " in text or " midday " in text:
        return 12
    if " midnight " in text:
        return 0
    match = re.search(r"\b(\d{1,2})(?::\d{2})?\b", text)
    hour = int(match.group(1)) if match else next(
        (v for w, v in _HOUR_WORDS.items() if f" {w} " in text), None)  # fmt: skip
    if hour is None or hour > 23:
        raise EventsError(f"{said!r} is not a time of day")
    if hour >= 13 or hour == 0:
        return hour
    if any(f" {w} " in text for w in _MORNING):
        return hour % 12
    if hour == 12:
        return 12
    return hour + 12


def evening_plan(start_hour: int, end_hour: int) -> list[tuple[str, str]]:
    """A simple timed plan between two hours (end past midnight allowed): arrival, dinner, toast, music."""
    if not 0 <= start_hour <= 23 or not 0 <= end_hour <= 23:
        raise EventsError("hours are 0 to 23")
    span = (end_hour - start_hour) % 24 or 24
    steps = [(0.0, "Guests arrive, drinks"), (0.25, "Dinner"), (0.5, "Toast"), (0.6, "Music and dancing"),
             (0.95, "Goodbyes")]  # fmt: skip
    plan = []
    for fraction, title in steps:
        minutes = round(start_hour * 60 + fraction * span * 60) // 15 * 15
        plan.append((f"{minutes // 60 % 24:02d}:{minutes % 60:02d}", title))
    return plan
