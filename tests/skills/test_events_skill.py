"""The event-planning skill: its tools write the right rows to a real SQLite file, the CLI reads them back,
and a process killed in the middle of writing leaves a consistent database with every committed write."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.cli import main
from app.skills.events import register_event_tools
from app.skills.events_db import MIGRATIONS, EventStore, evening_plan, parse_hour
from app.tools import ToolRegistry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path):
    s = EventStore(tmp_path / "events.db")
    yield s
    s.close()


async def test_tools_write_the_right_rows(store):
    tools = register_event_tools(ToolRegistry(), store)
    assert (
        await tools.call("add_guest", {"event": "Saturday's party", "name": "Maria", "dietary": "vegetarian"})
    ).ok
    assert (await tools.call("add_guest", {"event": "Saturday's party", "name": "Tom", "plus_ones": 1})).ok
    assert (await tools.call("add_guest", {"event": "saturday's PARTY", "name": "Ana"})).ok  # same event
    assert (await tools.call("record_rsvp", {"event": "Saturday's party", "name": "Tom", "answer": "yes"})).ok
    unanswered = await tools.call("who_has_not_answered", {"event": "Saturday's party"})
    assert unanswered.output["unanswered"] == ["Maria", "Ana"]
    plan = await tools.call("plan_evening", {"event": "Saturday's party", "start": "seven", "end": "11 pm"})
    assert [i["starts"] for i in plan.output["itinerary"]] == ["19:00", "20:00", "21:00", "21:15", "22:45"]
    said = ["ten in the morning", "noon", "7:30 p.m.", "midnight", "19:00", "two in the afternoon"]
    assert [parse_hour(t) for t in said] == [10, 12, 19, 0, 19, 14]
    assert "not a time of day" in (await tools.call("plan_evening", {"event": "x", "start": "soon", "end": "7"})).error
    toast = await tools.call(
        "write_toast", {"event": "Sam's 40th", "honoree": "Sam", "occasion": "fortieth birthday"}
    )
    assert "Sam" in toast.output["toast"]
    missing = await tools.call("record_rsvp", {"event": "Saturday's party", "name": "Zoe", "answer": "no"})
    assert "not on the guest list" in missing.error

    event = store.event("Saturday's party")
    assert [(g["name"], g["rsvp"], g["plus_ones"], g["dietary"]) for g in event["guests"]] == [
        ("Maria", "pending", 0, "vegetarian"), ("Tom", "yes", 1, ""), ("Ana", "pending", 0, "")]  # fmt: skip
    assert [e["name"] for e in store.events()] == ["Saturday's party", "Sam's 40th"]
    assert store.events()[0]["attending"] == 2  # Tom and his plus-one


def test_schema_version_wal_and_foreign_keys(store):
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO guests (event_id, name) VALUES (999, 'ghost')")
    db.close()
    EventStore(store.path).close()  # reopening migrates nothing and keeps the data


def test_evening_plan_past_midnight():
    assert evening_plan(22, 2)[0] == ("22:00", "Guests arrive, drinks")
    assert evening_plan(22, 2)[-1][0] == "01:45"


WRITER = textwrap.dedent(
    """
    import sys
    from app.skills.events_db import EventStore, evening_plan
    store = EventStore(sys.argv[1])
    i = 0
    while True:
        i += 1
        store.plan_itinerary(f"event {i}", evening_plan(19, 23))   # 1 event + 5 rows in one transaction
        store.add_guest(f"event {i}", f"guest {i}", dietary="vegan")
        print(i, flush=True)                                       # only after both commits returned
    """
)


def test_killed_mid_write_loses_nothing_and_stays_consistent(tmp_path):
    path = tmp_path / "events.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    committed = 0
    for line in proc.stdout:  # waits on the writer's own reports: no sleeps
        committed = int(line)
        if committed >= 40:
            break
    proc.send_signal(signal.SIGKILL)  # mid-way through the next transactions
    proc.wait()
    proc.stdout.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    # every event has its whole itinerary or none of it (a transaction is all or nothing)
    counts = db.execute("SELECT e.name, count(i.id) FROM events e LEFT JOIN itinerary i ON i.event_id = e.id "
                        "GROUP BY e.id").fetchall()  # fmt: skip
    assert all(n == 5 for _, n in counts)
    names = {r[0] for r in db.execute("SELECT name FROM guests")}
    assert {f"guest {i}" for i in range(1, committed + 1)} <= names  # nothing reported committed is lost
    db.close()


def test_cli_list_show_export(store, capsys):
    store.add_guest("picnic", "Maria", dietary="vegetarian")
    store.plan_itinerary("picnic", evening_plan(12, 16))
    db = str(store.path)
    assert main(["events", "--db", db, "list"]) == 0
    assert "picnic" in capsys.readouterr().out
    assert main(["events", "--db", db, "show", "picnic"]) == 0
    out = capsys.readouterr().out
    assert "Maria: pending  (vegetarian)" in out and "12:00  Guests arrive" in out
    assert main(["events", "--db", db, "export"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["guests"][0]["name"] == "Maria"
    assert main(["events", "--db", db, "export", "--format", "csv"]) == 0
    assert "picnic,,Maria,pending,0,vegetarian" in capsys.readouterr().out
    assert main(["events", "--db", db, "show", "nope"]) == 2
