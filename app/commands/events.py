"""`specvoice events list|show|export`: inspect the event-planning skill's database from the shell."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from app.commands import UsageError
from app.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="database file (default: skills.events_db, else the XDG data folder)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="every event with its guest count and how many attend")
    show = sub.add_parser("show", help="one event: guests, RSVPs, dietary needs, itinerary, toasts")
    show.add_argument("event")
    export = sub.add_parser("export", help="everything, as JSON (default) or CSV guest rows")
    export.add_argument("--format", choices=("json", "csv"), default="json")


def run(args: argparse.Namespace, config: Config) -> int:
    from app.skills.events_db import EventsError, EventStore

    path = args.db or config.skills.events_db or None
    store = EventStore(path)
    try:
        if args.action == "list":
            rows = store.events()
            if not rows:
                print(f"no events yet ({store.path})")
            for e in rows:
                print(f"{e['name']}\t{e['date'] or '-'}\t{e['guests']} guests\t{e['attending']} attending")
        elif args.action == "show":
            try:
                event = store.event(args.event)
            except EventsError as exc:
                raise UsageError(str(exc)) from None
            print(f"{event['name']}  {event['date']}".rstrip())
            for g in event["guests"]:
                extra = f" +{g['plus_ones']}" if g["plus_ones"] else ""
                diet = f"  ({g['dietary']})" if g["dietary"] else ""
                print(f"  {g['name']}: {g['rsvp']}{extra}{diet}")
            for item in event["itinerary"]:
                print(f"  {item['starts']}  {item['title']}")
            for toast in event["toasts"]:
                print(f"  toast: {toast}")
        elif args.format == "json":
            json.dump(store.export(), sys.stdout, indent=2, ensure_ascii=False)
            print()
        else:
            writer = csv.writer(sys.stdout)
            writer.writerow(["event", "date", "guest", "rsvp", "plus_ones", "dietary"])
            for event in store.export():
                for g in event["guests"]:
                    writer.writerow(
                        [event["name"], event["date"], g["name"], g["rsvp"], g["plus_ones"], g["dietary"]]
                    )
    finally:
        store.close()
    return 0
