"""State stores: one interface, two backends (SQLite embedded, Redis production).

A store keeps, per namespace:

* user records (opaque bytes, encoded by :mod:`streamrl.consumers.state`);
* per event-partition metadata (applied offsets, event-time maxima) and an *epoch* that
  fences a processor which lost the partition (a zombie) out of further writes;
* per-partition timers (user -> next deadline) so pending joins are found after a restart.

:meth:`StateStore.commit` writes users, partition metadata and timers in one atomic
transaction, after checking that the caller still holds every partition's epoch. That is what
makes the processor's effect on state exactly-once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator


class StateStore(ABC):
    """The interface every backend implements (see tests/consumers/test_store_contract.py)."""

    @abstractmethod
    def claim(self, partitions: list[int]) -> dict[int, int]:
        """Take ownership: bump and return each partition's epoch."""

    @abstractmethod
    def load_partition(self, partition: int) -> bytes | None:
        """The partition's metadata as last committed, or None."""

    @abstractmethod
    def load_timers(self, partition: int) -> dict[str, int]:
        """user_id -> deadline of every user of ``partition`` with open joins."""

    @abstractmethod
    def get_users(self, user_ids: list[str]) -> dict[str, bytes]:
        """Records of the given users; absent users are left out."""

    @abstractmethod
    def commit(self, epochs: dict[int, int], partitions: dict[int, bytes],
               users: dict[str, bytes], timers: dict[int, dict[str, int | None]]) -> None:
        """Atomically write partition metadata, users and timers (None deletes a timer).

        Raises :class:`~streamrl.errors.StaleEpochError` and writes nothing when any
        partition in ``epochs`` has been claimed by someone else since.
        """

    @abstractmethod
    def scan_users(self) -> Iterator[tuple[str, bytes]]:
        """Every user record (exports, tests)."""

    @abstractmethod
    def drop(self) -> None:
        """Delete everything in this namespace."""

    @abstractmethod
    def close(self) -> None:
        ...

    def get_user(self, user_id: str) -> bytes | None:
        return self.get_users([user_id]).get(user_id)

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(url: str, namespace: str = "streamrl") -> StateStore:
    """``sqlite:///path/to/file.db`` or ``redis://host:port/db``."""
    if url.startswith("sqlite://"):
        from streamrl.consumers.sqlite_store import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///").removeprefix("sqlite://"), namespace)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from streamrl.consumers.redis_store import RedisStore

        return RedisStore(url, namespace)
    raise ValueError(f"unknown state store URL {url!r} (sqlite:///PATH or redis://HOST:PORT/DB)")
