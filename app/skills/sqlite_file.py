"""One way to open a skill's SQLite file: autocommit (each change its own `BEGIN IMMEDIATE`), WAL,
synchronous=FULL so a committed write survives a killed process or a power cut, foreign keys on."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def data_path(filename: str) -> Path:
    """The default place of a skill's database: $XDG_DATA_HOME/specvoice/<filename>."""
    root = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(root) / "specvoice" / filename


def open_database(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db
