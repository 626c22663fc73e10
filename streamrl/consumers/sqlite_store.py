"""SQLite state store: the embedded default. WAL mode, safe with several processes on one file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from streamrl.consumers.store import StateStore
from streamrl.errors import StaleEpochError
from streamrl.sqlite import connect_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (ns TEXT, user_id TEXT, data BLOB NOT NULL, PRIMARY KEY (ns, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partitions (ns TEXT, partition INTEGER, epoch INTEGER NOT NULL, meta BLOB,
                                       PRIMARY KEY (ns, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timers (ns TEXT, partition INTEGER, user_id TEXT, deadline INTEGER NOT NULL,
                                   PRIMARY KEY (ns, partition, user_id)) WITHOUT ROWID;
"""


class SQLiteStore(StateStore):
    """One file, many namespaces. ``synchronous=NORMAL``: a killed process loses nothing."""

    def __init__(self, path: str, namespace: str = "streamrl") -> None:
        self.path = path
        self.ns = namespace
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = connect_wal(path, timeout_s=60, check_same_thread=False)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=60000")
        self.db.executescript(_SCHEMA)

    def claim(self, partitions: list[int]) -> dict[int, int]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO partitions (ns, partition, epoch) VALUES (?, ?, 0)",
                           [(self.ns, p) for p in partitions])
            db.executemany("UPDATE partitions SET epoch = epoch + 1 WHERE ns = ? AND partition = ?",
                           [(self.ns, p) for p in partitions])
            out = {p: self._epoch(p) for p in partitions}
            db.execute("COMMIT")
            return out
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _epoch(self, p: int) -> int | None:
        row = self.db.execute("SELECT epoch FROM partitions WHERE ns = ? AND partition = ?", (self.ns, p)).fetchone()
        return None if row is None else row[0]

    def load_partition(self, partition: int) -> bytes | None:
        row = self.db.execute("SELECT meta FROM partitions WHERE ns = ? AND partition = ?",
                              (self.ns, partition)).fetchone()
        return None if row is None else row[0]

    def load_timers(self, partition: int) -> dict[str, int]:
        return dict(self.db.execute("SELECT user_id, deadline FROM timers WHERE ns = ? AND partition = ?",
                                    (self.ns, partition)).fetchall())

    def get_users(self, user_ids: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(user_ids), 500):
            chunk = user_ids[i:i + 500]
            q = f"SELECT user_id, data FROM users WHERE ns = ? AND user_id IN ({','.join('?' * len(chunk))})"
            out.update(self.db.execute(q, (self.ns, *chunk)).fetchall())
        return out

    def commit(self, epochs, partitions, users, timers) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for p, epoch in epochs.items():
                current = self._epoch(p)
                if current != epoch:
                    raise StaleEpochError(f"partition {p}: epoch {epoch} superseded by {current}")
            db.executemany("INSERT OR REPLACE INTO users (ns, user_id, data) VALUES (?, ?, ?)",
                           [(self.ns, u, d) for u, d in users.items()])
            db.executemany("UPDATE partitions SET meta = ? WHERE ns = ? AND partition = ?",
                           [(m, self.ns, p) for p, m in partitions.items()])
            for p, ts in timers.items():
                db.executemany("INSERT OR REPLACE INTO timers (ns, partition, user_id, deadline) VALUES (?, ?, ?, ?)",
                               [(self.ns, p, u, d) for u, d in ts.items() if d is not None])
                db.executemany("DELETE FROM timers WHERE ns = ? AND partition = ? AND user_id = ?",
                               [(self.ns, p, u) for u, d in ts.items() if d is None])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def scan_users(self) -> Iterator[tuple[str, bytes]]:
        yield from self.db.execute("SELECT user_id, data FROM users WHERE ns = ? ORDER BY user_id", (self.ns,))

    def drop(self) -> None:
        for table in ("users", "partitions", "timers"):
            self.db.execute(f"DELETE FROM {table} WHERE ns = ?", (self.ns,))

    def close(self) -> None:
        self.db.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({os.fspath(self.path)!r}, namespace={self.ns!r})"
