"""An order-lookup example tool over a sample SQLite table, for support bots (docs/support-bot.md).

`OrderStore(path)` creates the `orders` table with a few sample rows on first use (an empty file or a new
path), so the example works out of the box; point `path` at a copy of your own data to try it for real.
Read-only from the model's side: the tool only looks orders up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.skills.sqlite_file import data_path, open_database
from app.tools import ToolRegistry

SAMPLE_ORDERS = [  # (number, customer, item, status, expected delivery)
    (1446, "Ana Lopez", "standing desk", "shipped", "2026-12-05"),
    (2650, "Ben Okafor", "espresso machine", "processing", "2026-12-09"),
    (3817, "Chloe Martin", "running shoes", "delivered", "2026-11-28"),
    (4172, "Dev Patel", "noise-cancelling headphones", "shipped", "2026-12-04"),
    (5290, "Eva Novak", "winter jacket", "returned", ""),
    (6031, "Femi Adeyemi", "coffee grinder", "cancelled", ""),
]


EXAMPLES: dict[str, list[tuple[str, dict]]] = {  # for the tool prompt (see app/skills/events.py)
    "lookup_order": [("Has order 1234 shipped yet?", {"order_number": 1234}),
                     ("I have a question about my order, number 5678.", {"order_number": 5678})],
}


def default_path() -> Path:
    return data_path("orders.db")


class OrderStore:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else default_path()
        self._db = open_database(self.path)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS orders (number INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
                "item TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('processing', 'shipped', "
                "'delivered', 'returned', 'cancelled')), expected_delivery TEXT NOT NULL DEFAULT '')"
            )
            if self._db.execute("SELECT count(*) FROM orders").fetchone()[0] == 0:
                self._db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", SAMPLE_ORDERS)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def lookup(self, number: int) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM orders WHERE number = ?", (number,)).fetchone()
        return dict(row) if row is not None else None


def register_order_tools(registry: ToolRegistry, store: OrderStore) -> ToolRegistry:
    """Add `lookup_order` (reads `store`) to `registry`."""

    @registry.register
    def lookup_order(order_number: int) -> dict:
        """Look up an order's status and delivery date by its number.

        Args:
            order_number: the order number the caller gives, digits only, e.g. 1234
        """
        order = store.lookup(order_number)
        if order is None:
            return {"order_number": order_number, "found": False}
        return {"found": True, **order}

    registry.add_examples(EXAMPLES)
    return registry
