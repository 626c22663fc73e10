"""The snapshot watcher: start-up load, then a thread that follows ``policy.snapshots``.

Start-up (:meth:`SnapshotWatcher.load_initial`): read the topic up to its high watermark and the
local snapshot directory, then try the verified snapshots newest first until one rebuilds into
a policy. Afterwards the thread polls the topic; the reader reassembles and verifies each
snapshot (sha256, shapes, finiteness, version above the last one read) and the ranker rebuilds
it, checks that it is newer than the one served, and swaps it in. Every verified snapshot that
is swapped in is also saved to the snapshot directory.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from streamrl.config import Settings
from streamrl.producers.snapshot import Snapshot, SnapshotReader
from streamrl.serving.ranker import Ranker
from streamrl.serving.snapdir import iter_snapshots, save_snapshot

log = logging.getLogger(__name__)


class SnapshotWatcher:
    """Follows the snapshot topic in a daemon thread and offers each new snapshot to ``ranker``."""

    def __init__(self, settings: Settings, ranker: Ranker, reader: SnapshotReader | None = None,
                 poll_ms: int = 100) -> None:
        self.settings = settings
        self.ranker = ranker
        self.reader = reader
        if self.reader is None and settings.bootstrap_servers:
            self.reader = SnapshotReader(settings)
        self.poll_ms = poll_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load_initial(self, timeout_s: float = 10.0) -> int:
        """Serve the newest snapshot that verifies and rebuilds; returns its version (-1: none)."""
        found: list[Snapshot] = list(iter_snapshots(self.settings.snapshot_dir)) if self.settings.snapshot_dir else []
        if self.reader is not None:
            found.extend(self._drain(timeout_s))
        for snap in sorted(found, key=lambda s: s.version, reverse=True):
            if snap.version <= self.ranker.version:
                break
            if self.ranker.offer(snap):
                self._save(snap)
                break
        if self.ranker.version < 0:
            log.warning("no valid snapshot found at start-up: /readyz answers 503 until one arrives")
        return self.ranker.version

    def _drain(self, timeout_s: float, keep: int = 3) -> list[Snapshot]:
        """The newest verified snapshot of each poll (the last ``keep``), up to the high watermark."""
        recent: collections.deque[Snapshot] = collections.deque(maxlen=keep)
        reader = self.reader
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            snap = reader.poll(timeout_ms=200)
            if snap is not None:
                recent.append(snap)
            hw = reader.consumer.highwater(reader.tp)
            if hw is not None and reader.consumer.position(reader.tp) >= hw:
                break
        return list(recent)

    def start(self) -> "SnapshotWatcher":
        if self.reader is not None:
            self._thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            snap = self.reader.poll(timeout_ms=self.poll_ms)
            if snap is not None and self.ranker.offer(snap):
                self._save(snap)

    def _save(self, snap: Snapshot) -> None:
        if self.settings.snapshot_dir:
            try:
                save_snapshot(self.settings.snapshot_dir, snap)
            except OSError as e:
                log.warning("could not save snapshot v%d to %s: %s", snap.version, self.settings.snapshot_dir, e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.reader is not None:
            self.reader.close()
