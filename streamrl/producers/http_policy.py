"""The closed loop's policy: the simulator asks the ranking service over HTTP for each slate.

:class:`HttpRankerPolicy` follows :class:`streamrl.producers.policies.Policy`; it keeps one
persistent HTTP/1.1 connection, and exposes the ranker's ``request_id`` and ``policy_version`` of
the last slate so the simulator's view events carry them (the processor joins rewards to them,
the learner reads propensities and versions from them).
"""

from __future__ import annotations

import http.client
import logging
import time
from urllib.parse import urlsplit

import orjson

from streamrl.errors import StreamrlError
from streamrl.producers.policies import Ranking

log = logging.getLogger(__name__)


class RankerUnavailable(StreamrlError):
    """The ranking service did not answer a /rank request in time."""


class RankerNotReady(RankerUnavailable):
    """The ranking service answered /rank with 503: it has no verified policy loaded yet."""


class HttpRankerPolicy:
    """``POST {url}/rank`` per slate; waits for /readyz at start (a policy must be loaded)."""

    def __init__(self, url: str, token: str = "", timeout_s: float = 5.0, retries: int = 3) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout_s = timeout_s
        self.retries = retries
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.version: int | None = None
        self.last_request_id: str | None = None
        self.served_at: dict[int, float] = {}  # policy version -> wall time it was first served
        self._conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 retries: int | None = None) -> tuple[int, bytes]:
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                self._conn.request(method, path, body=body, headers=self.headers)
                resp = self._conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as e:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if attempt == retries:
                    raise RankerUnavailable(f"{method} {path}: {e}") from e
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def probe(self) -> int | None:
        """One ``GET /readyz``: its status (200 a verified policy is loaded, 503 not yet), None when
        the ranker does not answer."""
        try:
            return self._request("GET", "/readyz", retries=0)[0]
        except RankerUnavailable:
            return None

    def ready(self) -> bool:
        """One ``GET /readyz``: true when the ranker answers and has a verified policy loaded."""
        return self.probe() == 200

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the ranker has a verified policy loaded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return
            time.sleep(0.25)
        raise RankerUnavailable(f"ranker at {self.host}:{self.port} not ready after {timeout_s}s")

    def rank(self, user_id: str, candidates: list[str], k: int, ts: int, recent: list[str] | None = None) -> Ranking:
        """One ``POST /rank``; ``recent`` is the client's session context (recently engaged items)."""
        doc: dict = {"user_id": user_id, "candidates": candidates, "k": k}
        if recent:
            doc["recent"] = recent
        body = orjson.dumps(doc)
        status, raw = self._request("POST", "/rank", body)
        if status == 503:
            raise RankerNotReady(f"/rank answered 503: {raw[:300]!r}")
        if status != 200:
            raise RankerUnavailable(f"/rank answered {status}: {raw[:300]!r}")
        doc = orjson.loads(raw)
        self.version = doc.get("policy_version")
        self.last_request_id = doc.get("request_id")
        if self.version is not None and self.version not in self.served_at:
            self.served_at[self.version] = time.time()
        return [(it["item_id"], float(it["propensity"])) for it in doc["items"]]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
