"""Every SQLite file the project opens (the embedding cache, the embedded state store) can be
opened by several processes at once, new file included: SQLite refuses the switch to WAL mode
at once, without a busy wait, while another connection makes it (before the retry, 3 of 160
opens of a new embedding cache by 8 processes at a time failed with "database is locked")."""

from __future__ import annotations

import multiprocessing as mp

from streamrl.catalog import TextEmbedder
from streamrl.consumers.sqlite_store import SQLiteStore


def _open(kind: str, path: str, go, out) -> None:
    go.wait(30)                                          # all together, as the demo's processes start
    try:
        if kind == "cache":
            TextEmbedder(path)._db().execute("SELECT count(*) FROM emb").fetchone()
        else:
            SQLiteStore(f"{path}/state.db").claim([0])
        out.put("ok")
    except Exception as e:  # the test reports what failed
        out.put(repr(e))


def test_several_processes_open_a_new_sqlite_file_at_once(tmp_path):
    ctx = mp.get_context("fork")
    results = []
    for trial in range(15):
        for kind in ("cache", "store"):
            path = tmp_path / f"{kind}-{trial}"
            path.mkdir()
            out, go = ctx.Queue(), ctx.Event()
            procs = [ctx.Process(target=_open, args=(kind, str(path), go, out)) for _ in range(8)]
            for p in procs:
                p.start()
            go.set()
            results += [out.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(timeout=60)
    assert results == ["ok"] * len(results), [r for r in results if r != "ok"]
