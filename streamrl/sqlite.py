"""SQLite connections in WAL mode, for every SQLite file the project opens (the embedding cache,
the embedded state store), from any number of processes at once."""

from __future__ import annotations

import sqlite3
import time


def connect_wal(path: str, timeout_s: float, attempts: int = 200, **kwargs) -> sqlite3.Connection:
    """``sqlite3.connect(path, timeout=timeout_s, isolation_level=None, **kwargs)`` in WAL mode.

    SQLite answers ``PRAGMA journal_mode=WAL`` with "database is locked" at once, without waiting
    out the busy timeout, while another connection is creating the file or switching its mode (8
    processes opening a new embedding cache together: 3 of 160 opens failed); such a switch takes
    milliseconds, so the pragma is retried every 50 ms, ``attempts`` times.
    """
    db = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, **kwargs)
    for n in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return db
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or n == attempts - 1:
                db.close()
                raise
            time.sleep(0.05)
    return db
