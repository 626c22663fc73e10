"""Redis state store: the production backend.

Keys share the hash tag ``{<namespace>}`` so one MULTI/EXEC covers users, partition metadata
and timers (on Redis Cluster the namespace lives on one slot; shard by namespace).
The epoch check uses WATCH: a claim by another processor between check and EXEC aborts it.
"""

from __future__ import annotations

from typing import Iterator

import redis

from streamrl.consumers.store import StateStore
from streamrl.errors import StaleEpochError, StoreError


class RedisStore(StateStore):
    def __init__(self, url: str, namespace: str = "streamrl") -> None:
        self.ns = namespace
        self.r = redis.Redis.from_url(url, socket_timeout=30)
        self._prefix = f"{{{namespace}}}:"
        try:
            self.r.ping()
        except redis.RedisError as e:
            raise StoreError(f"cannot reach Redis at {url}: {e}") from e

    def _u(self, user_id: str) -> str:
        return f"{self._prefix}u:{user_id}"

    def _p(self, p: int) -> str:
        return f"{self._prefix}p:{p}"

    def _t(self, p: int) -> str:
        return f"{self._prefix}t:{p}"

    def claim(self, partitions: list[int]) -> dict[int, int]:
        pipe = self.r.pipeline(transaction=True)
        for p in partitions:
            pipe.hincrby(self._p(p), "epoch", 1)
        return dict(zip(partitions, (int(e) for e in pipe.execute())))

    def load_partition(self, partition: int) -> bytes | None:
        return self.r.hget(self._p(partition), "meta")

    def load_timers(self, partition: int) -> dict[str, int]:
        return {u.decode(): int(d) for u, d in self.r.zrange(self._t(partition), 0, -1, withscores=True)}

    def get_users(self, user_ids: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(user_ids), 1000):
            chunk = user_ids[i:i + 1000]
            for u, v in zip(chunk, self.r.mget([self._u(u) for u in chunk])):
                if v is not None:
                    out[u] = v
        return out

    def commit(self, epochs, partitions, users, timers) -> None:
        keys = [self._p(p) for p in epochs]
        with self.r.pipeline(transaction=True) as pipe:
            try:
                if keys:
                    pipe.watch(*keys)
                    for p, key in zip(epochs, keys):
                        current = pipe.hget(key, "epoch")
                        if current is None or int(current) != epochs[p]:
                            raise StaleEpochError(f"partition {p}: epoch {epochs[p]} superseded by {current!r}")
                pipe.multi()
                if users:
                    pipe.mset({self._u(u): d for u, d in users.items()})
                for p, meta in partitions.items():
                    pipe.hset(self._p(p), "meta", meta)
                for p, ts in timers.items():
                    add = {u: d for u, d in ts.items() if d is not None}
                    rem = [u for u, d in ts.items() if d is None]
                    if add:
                        pipe.zadd(self._t(p), add)
                    if rem:
                        pipe.zrem(self._t(p), *rem)
                pipe.execute()
            except redis.WatchError as e:
                raise StaleEpochError(f"partitions {sorted(epochs)} claimed during commit") from e

    def scan_users(self) -> Iterator[tuple[str, bytes]]:
        n = len(self._prefix) + 2
        keys = sorted(self.r.scan_iter(match=f"{self._prefix}u:*", count=1000))
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            for k, v in zip(chunk, self.r.mget(chunk)):
                if v is not None:
                    yield k.decode()[n:], v

    def drop(self) -> None:
        batch = []
        for k in self.r.scan_iter(match=f"{self._prefix}*", count=1000):
            batch.append(k)
            if len(batch) >= 1000:
                self.r.delete(*batch)
                batch = []
        if batch:
            self.r.delete(*batch)

    def close(self) -> None:
        self.r.close()

    def __repr__(self) -> str:
        return f"RedisStore(namespace={self.ns!r})"
