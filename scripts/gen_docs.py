#!/usr/bin/env python3
"""Regenerate the README's settings and metrics tables from the code (`--check`: fail if stale).

The tables live between ``<!-- settings:begin -->``/``<!-- settings:end -->`` and
``<!-- metrics:begin -->``/``<!-- metrics:end -->``; tests/test_docs.py runs ``--check``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def settings_table() -> str:
    from streamrl.config import Settings

    rows = ["| setting (env / flag) | default | meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        rows.append(f"| `STREAMRL_{f.name.upper()}` `--{f.name.replace('_', '-')}` | `{f.default!s}` | "
                    f"{f.metadata.get('help', '')} |")
    return "\n".join(rows)


def metrics_table() -> str:
    import streamrl.metrics as m
    from prometheus_client.metrics import MetricWrapperBase

    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for obj in vars(m).values():
        if isinstance(obj, MetricWrapperBase):
            name = obj._name + ("_total" if obj._type == "counter" else "")
            labels = ", ".join(obj._labelnames) or "–"
            rows.append(f"| `{name}` | {obj._type} | {labels} | {obj._documentation} |")
    return "\n".join(rows)


def render(text: str) -> str:
    for tag, table in (("settings", settings_table()), ("metrics", metrics_table())):
        pat = re.compile(rf"(<!-- {tag}:begin -->\n).*?(<!-- {tag}:end -->)", re.S)
        if not pat.search(text):
            raise SystemExit(f"README.md has no {tag} markers")
        text = pat.sub(lambda mt: mt.group(1) + table + "\n" + mt.group(2), text)
    return text


def main() -> int:
    old = README.read_text()
    new = render(old)
    if "--check" in sys.argv:
        if new != old:
            print("README.md tables are stale: run scripts/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
